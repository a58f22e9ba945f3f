"""Issue 21's hostile cases against ``hygieia run``, run as root as CI runs them, under bubblewrap and
(marked ``docker``) under Docker: each escape refused, each overrun Failed with the limit named, nothing
a step leaves followed; an innocent run after each scores as before."""

from __future__ import annotations

import json
import os
import site
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hygieia.bundle.archive import unpack
from hygieia.bundle.limits import CgroupUnavailable, FolderWatch, Limits, MemoryCgroup, format_size, parse_size
from hygieia.bundle.sandbox import DROP_PRIVILEGES, Step, bwrap_argv, bwrap_problem, command_argv, step_env
from hygieia.bundle.worker import detailed_results, read_scores, run_submission, write_worker_metadata
from hygieia.errors import HygieiaError
from hygieia.files import special_entries as found_special_entries
from hygieia.submission.isolation import namespaces_problem
from test_worker import ROOT, bundle_dir, write_model  # noqa: F401
from test_worker_docker import test_image  # noqa: F401


# -- the worker's own reads and copies: nothing followed, nothing blocks --------------------------
def make_special_entries(folder: Path) -> dict[str, str]:
    """One of each thing a step could leave, by name -> what the refusal calls it."""
    (folder / "pagemap").symlink_to("/proc/self/pagemap")
    os.mkfifo(folder / "pipe")
    listening = socket.socket(socket.AF_UNIX)
    listening.bind(str(folder / "socket"))
    listening.close()
    made = {"pagemap": "a symbolic link (to /proc/self/pagemap)", "pipe": "a FIFO", "socket": "a socket"}
    if os.geteuid() == 0:   # only root may make a device node (a step has no CAP_MKNOD)
        os.mknod(folder / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        made["null"] = "a character device"
    return made


@pytest.mark.parametrize("depth", ["top", "nested"])
def test_a_folder_holding_a_link_fifo_device_or_socket_is_refused_before_anything_is_copied(tmp_path, depth):
    (tmp_path / "kinds").mkdir()
    made = make_special_entries(tmp_path / "kinds")
    for name, kind in made.items():
        folder = tmp_path / name / "submission"
        (folder / "sub").mkdir(parents=True)
        (folder / "model.py").write_text("class Model: pass\n")
        where = folder / "sub" if depth == "nested" else folder
        os.rename(tmp_path / "kinds" / name, where / name)
        entry = f"sub/{name}" if depth == "nested" else name
        with pytest.raises(HygieiaError, match=rf"{entry} is {kind.replace('(', '[(]').replace(')', '[)]')}: "
                                               "a link, FIFO or device is never followed or copied"):
            unpack(folder, tmp_path / name / "copy")
        assert not (tmp_path / name / "copy").exists()


def test_a_folder_is_copied_whole_and_bounded(tmp_path):
    (tmp_path / "sub" / "helpers").mkdir(parents=True)
    (tmp_path / "sub" / "empty").mkdir()
    (tmp_path / "sub" / "model.py").write_text("class Model: pass\n")
    (tmp_path / "sub" / "helpers" / "w.bin").write_bytes(b"x" * 5000)
    unpack(tmp_path / "sub", tmp_path / "copy")
    assert sorted(p.relative_to(tmp_path / "copy").as_posix() for p in (tmp_path / "copy").rglob("*")) == \
        ["empty", "helpers", "helpers/w.bin", "model.py"]
    with pytest.raises(HygieiaError, match="holds 0 MB, more than the limit of 0 MB"):
        unpack(tmp_path / "sub", tmp_path / "too_big", max_bytes=4000)
    with pytest.raises(HygieiaError, match="4 entries, more than the limit of 3"):
        unpack(tmp_path / "sub", tmp_path / "too_many", max_entries=3)
    assert not (tmp_path / "too_big").exists() and not (tmp_path / "too_many").exists()


def test_the_workers_metadata_is_never_written_through_a_link(tmp_path):
    fields = {"exitCode": 0, "elapsedTime": 1.0, "ingestionExitCode": None, "ingestionElapsedTime": None}
    planted, kept = tmp_path / "planted", tmp_path / "kept.txt"
    kept.write_text("the organizer's file")
    for target in (planted, kept):
        output = tmp_path / f"output-{target.name}"
        output.mkdir()
        (output / "metadata").symlink_to(target)
        assert write_worker_metadata(output, fields).startswith("Error, the output directory already contains")
    assert not os.path.lexists(planted) and kept.read_text() == "the organizer's file"
    assert write_worker_metadata(tmp_path, fields) is None
    assert yaml.safe_load((tmp_path / "metadata").read_text()) == fields


def test_scores_and_pages_are_read_only_from_regular_files(tmp_path):
    (tmp_path / "real.json").write_text('{"accuracy": 0.5}')
    (tmp_path / "scores.json").symlink_to(tmp_path / "real.json")
    with pytest.raises(HygieiaError, match=r"scores.json: a symbolic link \(to .*real.json\), not a regular file"):
        read_scores(tmp_path)
    (tmp_path / "scores.json").unlink()
    os.mkfifo(tmp_path / "scores.json")   # would block a plain read forever
    start = time.monotonic()
    with pytest.raises(HygieiaError, match="scores.json: a FIFO, not a regular file"):
        read_scores(tmp_path)
    assert time.monotonic() - start < 1
    (tmp_path / "detailed_results.html").symlink_to("/etc/hostname")
    assert detailed_results(tmp_path) is None
    (tmp_path / "other.html").write_text("<p>ok</p>")
    assert detailed_results(tmp_path) == tmp_path / "other.html"


# -- the limits ------------------------------------------------------------------------------------
def test_sizes_are_read_and_shown_as_docker_does():
    assert parse_size("12g", "--memory") == 12 * 2**30 and parse_size("500M", "--max-output") == 500 * 2**20
    assert parse_size("1.5gb", "--scratch") == int(1.5 * 2**30) and parse_size("4096", "--memory") == 4096
    for bad in ("12x", "", "-1g", "0", "g"):
        with pytest.raises(HygieiaError, match=f"--memory {bad!r}: expected a size such as 12g"):
            parse_size(bad, "--memory")
    assert format_size(12 * 2**30) == "12.0 GiB" and format_size(300 * 2**20) == "300.0 MiB"
    assert "memory 1.0 GiB, output +1.0 GiB, /tmp 2.0 GiB per step" in Limits(memory=2**30).describe()


def test_a_watch_counts_what_a_step_adds_without_following_links(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model.py").write_bytes(b"x" * 3_000_000)    # there before the step: not counted
    (tmp_path / "big.bin").write_bytes(b"x" * 5_000_000)
    watch = FolderWatch(tmp_path / "out", 2_000_000, "the ingestion step's /app/output", "--max-output")
    (tmp_path / "out" / "link").symlink_to(tmp_path / "big.bin")       # a link counts no bytes
    (tmp_path / "out" / "predictions.csv").write_bytes(b"x" * 1_000_000)
    assert watch.check() is None
    (tmp_path / "out" / "filler").write_bytes(b"x" * 1_500_000)
    assert watch.check() == ("the ingestion step's /app/output grew past its limit of 1.9 MiB (hygieia run "
                             "--max-output); the step was stopped")


def test_a_memory_cgroup_bounds_every_process_of_a_step():
    try:
        cgroup = MemoryCgroup("unit", 64 * 2**20)
    except CgroupUnavailable as err:
        pytest.skip(f"no memory cgroup here: {err}")
    try:
        hog = subprocess.run([sys.executable, "-S", "-c", "b = bytearray(256 << 20)"], preexec_fn=cgroup.join)
        assert hog.returncode == -9 and cgroup.oom_kills() == 1
        assert cgroup.peak() is None or cgroup.peak() <= 64 * 2**20
        sleeper = subprocess.Popen(["sleep", "60"], preexec_fn=cgroup.join, start_new_session=True)
    finally:
        cgroup.close()   # kills what is left in it
    assert sleeper.wait(timeout=10) == -9 and not cgroup.path.exists()


# -- bubblewrap's shape as root and as another user ------------------------------------------------
def test_bwrap_runs_a_step_as_nobody_when_root_and_in_a_user_namespace_otherwise(tmp_path):
    problem = bwrap_problem()
    if problem:
        pytest.fail(f"bubblewrap is needed (.ci/run installs it): {problem}")
    (tmp_path / "program").mkdir()
    tmp_path.chmod(0o1777)   # a step's scratch is its user's (hand_over); a Python under /tmp is reached through it
    step = Step("probe", {"/app/program": tmp_path / "program", "/tmp": tmp_path}, {"/app/program"},
                "python3 -S -c 'import os; print(os.getuid(), os.getgid())'", 30)
    env = step_env("/app/program", {}, sandboxed=True)
    as_root = bwrap_argv(step, env, as_root=True)
    assert as_root[as_root.index("--") + 1:] == [sys.executable, "-S", "-c", DROP_PRIVILEGES, "65534", "65534"]
    assert "--unshare-all" not in as_root and as_root[4:6] == ["--cap-drop", "ALL"]
    other = bwrap_argv(step, env, as_root=False)
    assert "--unshare-all" in other and other[other.index("--") + 1:] == []
    for argv, expected in ((as_root, "65534 65534"), (other, f"{os.getuid()} {os.getgid()}")):
        if os.geteuid() != 0 and argv is as_root:
            continue   # only root's bubblewrap mounts without a user namespace
        if argv is other and namespaces_problem():
            continue   # where user namespaces are refused (a chroot, a container), only root's shape runs
        shown = subprocess.run(argv + command_argv(step.command, None), capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0 and shown.stdout.split() == expected.split(), shown.stderr

ESCAPES = r"""
import ctypes, errno, json, os, sys
from pathlib import Path

libc = ctypes.CDLL(None, use_errno=True)
MS_RDONLY, MS_REMOUNT, MS_BIND = 1, 32, 4096
CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000
OUT = Path("/app/output")
PLANT = "import pathlib\npathlib.Path('/app/output/PLANTED').write_text(__file__)\n"

def failed(code):
    return errno.errorcode.get(code, str(code))

def mount(source, target, flags):
    if libc.mount(source and source.encode(), target.encode(), None, flags, None) == 0:
        return "done"
    return failed(ctypes.get_errno())

def attempt(action):
    try:
        action()
        return "done"
    except OSError as err:
        return failed(err.errno)

def nested(action):
    # in a user and mount namespace of its own (all capabilities there), if the sandbox allows one
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            unshared = libc.unshare(CLONE_NEWUSER | CLONE_NEWNS) == 0
            said = action() if unshared else "unshare " + failed(ctypes.get_errno())
        except BaseException as err:
            said = repr(err)
        os.write(write, said.encode())
        os._exit(0)
    os.close(write)
    said = os.read(read, 4096).decode()
    os.waitpid(pid, 0)
    return said

def rebind_rw(path):
    # a fresh bind of a read-only mount, then remounted read-write
    spot = "/tmp/rebind-dir" if os.path.isdir(path) else "/tmp/rebind-file"
    if os.path.isdir(path):
        os.makedirs(spot, exist_ok=True)
    else:
        open(spot, "a").close()
    bound = mount(path, spot, MS_BIND)
    return "bind " + bound if bound != "done" else mount(None, spot, MS_REMOUNT | MS_BIND)

def write_into(path):
    if os.path.isdir(path):
        return attempt(lambda: Path(path, "hostile-was-here").write_text("x"))
    return attempt(lambda: open(path, "ab").close())

class Model:
    def fit(self, X, y):
        mount_points = {line.split()[4] for line in open("/proc/self/mountinfo")}
        targets = {"/app/program", "/app/input_data", "/usr", "/etc", "@WEIGHTS@"}
        own = ("/app/ingested_program", "/app/output", "/tmp")   # the step's own folders: it may write them
        # ...but not what is mounted inside them (a Python under /tmp is bound read-only into the step's /tmp)
        inside = [m for m in mount_points if m.startswith(tuple(o + "/" for o in own))]
        targets |= {entry for entry in sys.path if entry and (not entry.startswith(own) or any(
            entry == m or entry.startswith(m + "/") for m in inside))}
        wanted = ("Uid", "Gid", "Groups", "Cap", "NoNewPrivs")
        report = {"status": {line.split(":")[0]: line.split(":", 1)[1].strip()
                             for line in open("/proc/self/status") if line.startswith(wanted)},
                  "setuid_root": attempt(lambda: os.setuid(0)),
                  "mknod": attempt(lambda: os.mknod("/app/output/null", 0o20666, os.makedev(1, 3))),
                  "read_shadow": attempt(lambda: open("/etc/shadow").read()) if os.path.exists("/etc/shadow") else None,
                  "write_sysctl": attempt(lambda: open("/proc/sys/kernel/hostname", "w").write("hostile")),
                  "targets": {}}
        for path in sorted(t for t in targets if os.path.exists(t)):
            report["targets"][path] = {
                "mount_point": path in mount_points,
                "remount": mount(None, path, MS_REMOUNT | MS_BIND),
                "nested_remount": nested(lambda: mount(None, path, MS_REMOUNT | MS_BIND)),
                "nested_rebind": nested(lambda: rebind_rw(path)),
                "chmod": attempt(lambda: os.chmod(path, 0o777)),
                "write": write_into(path),
                "plant": attempt(lambda: Path(path, "html.py").write_text(PLANT)) if os.path.isdir(path) else None,
            }
        (OUT / "escapes.json").write_text(json.dumps(report))

    def predict_proba(self, X):
        return [0.5] * len(X["ids"])
"""


@pytest.fixture(scope="module", params=[pytest.param("bwrap"), pytest.param("docker", marks=pytest.mark.docker)])
def sandbox(request) -> dict:
    """run_submission's sandbox options: bubblewrap, or Docker in the tests' image."""
    if request.param == "docker":
        return {"sandbox": "docker", "docker_image": request.getfixturevalue("test_image")}
    return {"sandbox": "bwrap"}


@pytest.fixture(scope="module")
def innocent(bundle_dir, sandbox, tmp_path_factory) -> dict:  # noqa: F811
    """The tabular sample's scores under the sandbox, before any hostile run."""
    result = run_submission(ROOT / "sample_submission_tabular", bundle_dir, echo=False,
                            out_dir=tmp_path_factory.mktemp("innocent") / "run", **sandbox)
    assert result.status == "Finished" and result.sandbox == sandbox["sandbox"], result.report()
    return result.scores


def scores_as_before(bundle_dir, tmp_path, sandbox, innocent) -> bool:  # noqa: F811
    after = run_submission(ROOT / "sample_submission_tabular", bundle_dir, out_dir=tmp_path / "after", echo=False,
                           **sandbox)
    return after.status == "Finished" and after.scores == innocent


@pytest.mark.slow
def test_a_step_cannot_remount_write_or_plant_anything(bundle_dir, tmp_path, sandbox, innocent):  # noqa: F811
    """Issue 21: as root, the step was uid 0 with nearly every capability; it remounted the program,
    the input, /usr, /etc, the environment and the weights read-write and planted a module shadowing
    the standard library's in site-packages, which the scoring step imported. Now it is nobody with no
    capability: every remount (also in a user namespace of its own, where the mounts stay locked),
    write, chmod and plant is refused, and the scoring step imports nothing it left."""
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"not really weights")
    environment = Path(site.getsitepackages()[0])
    try:
        model = ESCAPES.replace("@WEIGHTS@", str(weights))
        result = run_submission(write_model(tmp_path / "hostile", model), bundle_dir, out_dir=tmp_path / "run",
                                echo=False, env={"HYGIEIA_MOBILENET_WEIGHTS": str(weights)}, **sandbox)
        assert result.sandbox == sandbox["sandbox"], "bubblewrap is needed for this test (.ci/run installs it)"
        assert result.status == "Finished", result.report()
        report = json.loads((tmp_path / "run" / "prediction" / "output" / "escapes.json").read_text())
        status = report["status"]
        assert status["Uid"].split() == ["65534"] * 4 and status["Gid"].split() == ["65534"] * 4
        assert status["Groups"] in ("", "65534") and status["NoNewPrivs"] == "1"   # docker adds its gid
        # No capability to use, and none to gain (no-new-privileges). The bounding set is empty, unless
        # ingestion put the submission in a user namespace of its own (where uid 0 is not even mapped).
        assert {status[key] for key in ("CapInh", "CapPrm", "CapEff", "CapAmb")} == {"0000000000000000"}
        nested_user_namespace = report["setuid_root"] == "EINVAL"
        assert status["CapBnd"] == "0000000000000000" or nested_user_namespace
        assert report["setuid_root"] in ("EPERM", "EINVAL") and report["mknod"] == "EPERM"
        assert report["read_shadow"] in (None, "EACCES") and report["write_sysctl"] in ("EACCES", "EROFS")
        targets = report["targets"]
        expected = {"/app/program", "/app/input_data", "/usr", "/etc"}
        if sandbox["sandbox"] == "bwrap":   # this machine's environment and the weights, bound read-only
            expected |= {str(environment), str(weights)}
        assert expected <= set(targets), sorted(targets)
        for path, tried in targets.items():
            assert tried["remount"] == "EPERM", (path, tried)
            # a folder inside a mount is no mount point to remount (EINVAL): a fresh bind of it is tried
            assert tried["nested_remount"] in ("EPERM", "unshare EPERM") + (() if tried["mount_point"] else
                                                                           ("EINVAL",)), (path, tried)
            assert tried["nested_rebind"] in ("EPERM", "unshare EPERM", "bind EINVAL"), (path, tried)
            assert tried["chmod"] in ("EPERM", "EROFS"), (path, tried)
            assert tried["write"] in ("EACCES", "EROFS"), (path, tried)
            assert tried["plant"] in (None, "EACCES", "EROFS"), (path, tried)
        assert not (environment / "html.py").exists() and weights.read_bytes() == b"not really weights"
        assert not (tmp_path / "run" / "scoring" / "output" / "PLANTED").exists()
    finally:   # a plant that got through must not break this machine's Python for the next tests
        (environment / "html.py").unlink(missing_ok=True)
    assert scores_as_before(bundle_dir, tmp_path, sandbox, innocent)


LEFT_IN_OUTPUT = r"""
import os
from pathlib import Path

class Model:
    def fit(self, X, y):
        out = Path("/app/output")
        case = "@CASE@"
        if case == "metadata_link":
            os.symlink("@PLANTED@", out / "metadata")
        elif case == "pagemap_link":
            os.symlink("/proc/self/pagemap", out / "leak.bin")
        elif case == "reference_link":
            os.symlink("@REFERENCE@", out / "labels.csv")
        elif case == "host_file_link":
            os.symlink("/etc/hostname", out / "hostname")
        elif case == "folder_link":
            os.symlink("/etc", out / "etc")
        elif case == "fifo":
            os.mkfifo(out / "pipe")

    def predict_proba(self, X):
        return [0.5] * len(X["ids"])
"""
INGESTION_SAYS = {"pagemap_link": "left a symbolic link to /proc/self/pagemap /app/output/leak.bin",
                  "reference_link": "left a symbolic link to ",
                  "host_file_link": "left a symbolic link to /etc/hostname",
                  "folder_link": "left a symbolic link to /etc /app/output/etc", "fifo": "left a FIFO /app/output/pipe",
                  "metadata_link": "wrote /app/output/metadata, the worker's own file"}
REFUSED = {"pagemap_link": "leak.bin is a symbolic link (to /proc/self/pagemap)",
           "reference_link": "labels.csv is a symbolic link (to ",
           "host_file_link": "hostname is a symbolic link (to /etc/hostname)",
           "folder_link": "etc is a symbolic link (to /etc)",
           "fifo": "pipe is a FIFO"}


@pytest.mark.slow
@pytest.mark.parametrize("case", ["metadata_link"] + sorted(REFUSED))
def test_what_a_step_leaves_in_its_output_is_never_followed(bundle_dir, tmp_path, sandbox, innocent, case):  # noqa: F811
    """Issue 21: a dangling ``metadata`` link made the worker create a file of the submission's choosing
    on the host; links to host files copied them into the scoring input; a link to /proc/self/pagemap
    hung the worker. Now the run ends Failed at once, naming the entry, and nothing is followed."""
    if sandbox["sandbox"] == "docker" and case not in ("metadata_link", "pagemap_link", "fifo"):
        pytest.skip("the worker's refusal of a link, as pagemap_link shows under Docker too (containers are slow)")
    planted = tmp_path / "planted-by-the-submission"
    reference = tmp_path / "run" / "bundle" / "reference_data" / "valid" / "labels.csv"   # this run's own copy
    model = LEFT_IN_OUTPUT.replace("@CASE@", case).replace("@PLANTED@", str(planted))
    start = time.monotonic()
    result = run_submission(write_model(tmp_path / "hostile", model.replace("@REFERENCE@", str(reference))),
                            bundle_dir, out_dir=tmp_path / "run", echo=False, **sandbox)
    assert result.status == "Failed", result.report()
    assert not os.path.lexists(planted)
    copied = tmp_path / "run" / "scoring" / "input" / "res"
    if len(result.steps) == 2:   # ingestion removed the entry itself, without following it, and failed the run
        assert "ingestion exited with code 1: the submission's process " in result.error, result.report()
        assert INGESTION_SAYS[case] in result.error and "never followed" in result.error or case == "metadata_link"
        assert found_special_entries(copied) == []   # no link, FIFO or device reached the scoring input
    elif case == "metadata_link":   # the worker's own refusal, where ingestion did not clean its output
        assert result.error.startswith("Error, the output directory already contains a metadata file")
    else:
        assert result.error.startswith("the prediction output is not copied into the scoring input")
        assert REFUSED[case] in result.error and "never followed or copied" in result.error
        assert not copied.exists()
    assert time.monotonic() - start < 120   # nothing blocked
    assert scores_as_before(bundle_dir, tmp_path, sandbox, innocent)


OVERRUN = r"""
from pathlib import Path

class Model:
    def fit(self, X, y):
        case = "@CASE@"
        if case == "memory":
            hog = bytearray(1 << 30)       # 1 GiB, touched
        else:
            folder = Path("/app/output" if case == "output" else "/tmp")
            with open(folder / "filler.bin", "wb") as handle:
                for _ in range(40):            # 400 MB
                    handle.write(b"x" * 10_000_000)

    def predict_proba(self, X):
        return [0.5] * len(X["ids"])
"""


@pytest.mark.slow
@pytest.mark.parametrize(("case", "limit", "named"), [
    ("memory", "--memory", "the ingestion step went past its memory limit of 300.0 MiB (hygieia run --memory)"),
    ("output", "--max-output", "the ingestion step's /app/output grew past its limit of 50.0 MiB (hygieia run "
                               "--max-output)"),
    ("scratch", "--scratch", "the ingestion step's /tmp grew past its limit of 50.0 MiB (hygieia run --scratch)")])
def test_each_overrun_ends_the_run_failed_naming_its_limit(bundle_dir, tmp_path, sandbox, innocent, case,  # noqa: F811
                                                           limit, named):
    """Issue 21: 4 GB resident and 2 GB written to the output went unchecked, then the worker copied
    them into the scoring input; /tmp was RAM without a size. Now each ends the run Failed, naming the
    limit, before anything is copied."""
    limits = Limits(memory=parse_size("300m" if case == "memory" else "2g", "--memory"),
                    output=parse_size("50m", "--max-output"), scratch=parse_size("50m", "--scratch"))
    result = run_submission(write_model(tmp_path / "hostile", OVERRUN.replace("@CASE@", case)), bundle_dir,
                            out_dir=tmp_path / "run", echo=False, limits=limits, **sandbox)
    assert result.status == "Failed" and len(result.steps) == 1, result.report()
    assert result.error.startswith(named), result.error
    assert result.steps[0].overrun and "stopped (a limit)" in result.report()
    assert not (tmp_path / "run" / "scoring" / "input" / "res").exists()
    assert not (tmp_path / "run" / "prediction" / "tmp").exists()   # the scratch goes with its step
    assert scores_as_before(bundle_dir, tmp_path, sandbox, innocent)
