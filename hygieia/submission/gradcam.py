"""Grad-CAM heatmaps for a model's ``gradcam_target()``, with Captum's ``LayerGradCam``."""

from __future__ import annotations

import numpy as np

from hygieia.submission.api import SubmissionError

BATCH_SIZE = 64


def _opacity_logit(module, describe):
    """A forward function giving (N, 1): class 1 of (N, 2) logits, or the single (N,) / (N, 1) logit."""
    def forward(pixels):
        try:
            logits = module(pixels)
        except Exception as err:  # the participant's module: say what it was given
            raise SubmissionError(
                f"Grad-CAM: the gradcam_target() module failed on its input, which is always a float32 tensor "
                f"(N, 1, H, W) of pixels / 255 in [0, 1]; it got {pixels.dtype} {tuple(pixels.shape)} on "
                f"{pixels.device}: {describe(err)}") from err
        if not hasattr(logits, "ndim"):
            raise SubmissionError(f"the gradcam_target() module returned {type(logits).__name__}; "
                                  f"expected a tensor of logits")
        if logits.ndim == 2 and logits.shape[1] == 2:
            return logits[:, 1:2]
        if logits.ndim == 1 or (logits.ndim == 2 and logits.shape[1] == 1):
            return logits.reshape(-1, 1)
        raise SubmissionError(f"the gradcam_target() module returned logits of shape {tuple(logits.shape)}; "
                              f"expected ({len(pixels)}, 2), ({len(pixels)},) or ({len(pixels)}, 1)")
    return forward


def module_device(module):
    """The device of the module's first parameter (CPU for a module without parameters)."""
    import torch

    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def gradcam_heatmaps(module, layer, images: np.ndarray, batch_size: int = BATCH_SIZE,
                     progress: bool = False, describe=lambda err: f"{type(err).__name__}: {err}") -> np.ndarray:
    """(N, H, W) float32 Grad-CAM heatmaps of ``images`` ((N, H, W) uint8) for the opacity logit.

    ``module`` takes (N, 1, H, W) float32 pixels / 255; ``layer`` is one of its submodules. The
    layer's ReLU'd Grad-CAM is upsampled bilinearly to (H, W) and not rescaled. ``describe`` turns
    the module's own exception into the message's last part (ingestion names the submission's line).
    """
    import torch
    from captum.attr import LayerAttribution, LayerGradCam
    from tqdm import tqdm

    if not isinstance(module, torch.nn.Module) or not isinstance(layer, torch.nn.Module):
        raise SubmissionError("Model.gradcam_target() must return (module, layer), two torch.nn.Module")
    if not any(sub is layer for sub in module.modules()):
        raise SubmissionError("Model.gradcam_target(): the layer is not a submodule of the module")
    module.eval()
    device = module_device(module)
    cam = LayerGradCam(_opacity_logit(module, describe), layer)
    n, height, width = images.shape
    maps = np.zeros((n, height, width), np.float32)
    starts = range(0, n, batch_size)
    for start in tqdm(starts, desc="Grad-CAM", unit="batch", disable=not progress):
        batch = torch.from_numpy(images[start:start + batch_size]).to(device)
        pixels = batch.unsqueeze(1).float().div_(255)
        attributions = cam.attribute(pixels, target=0, relu_attributions=True)
        if attributions.ndim != 4:
            raise SubmissionError(f"Model.gradcam_target(): the layer's output has shape "
                                  f"{tuple(attributions.shape)}; Grad-CAM needs a (N, C, h, w) feature map")
        upsampled = LayerAttribution.interpolate(attributions.detach(), (height, width), "bilinear")
        maps[start:start + len(batch)] = upsampled[:, 0].float().cpu().numpy()
    return maps


RANDOMISATION_STAGES = ("head", "head + target layer", "head + target layer + the block before")
SANITY_IMAGES = 32  # explained images per run in the randomisation check


def _leaves(module) -> list:
    """Leaf modules that hold parameters, in registration (usually forward) order."""
    return [m for m in module.modules() if not list(m.children()) and any(True for _ in m.parameters(recurse=False))]


def randomisation_stages(module, layer) -> list[list]:
    """The leaf modules re-initialised at each cascading stage of the model-randomisation check (Adebayo et al.,
    NeurIPS 2018): the head (every parameterised leaf registered after ``layer``), then ``layer`` too, then the
    block registered just before ``layer`` in its parent too. Stages that would add nothing are left out."""
    leaves = _leaves(module)
    inside = {id(m) for m in _leaves(layer)}
    last = max((k for k, m in enumerate(leaves) if id(m) in inside), default=-1)
    head = [m for m in leaves[last + 1:] if id(m) not in inside]
    stages = [head, head + [m for m in leaves if id(m) in inside]]
    parent = next((p for p in module.modules() if any(c is layer for c in p.children())), None)
    siblings = list(parent.children()) if parent is not None else []
    position = next((k for k, c in enumerate(siblings) if c is layer), 0)
    if position > 0:
        stages.append(stages[1] + _leaves(siblings[position - 1]))
    kept, seen = [], 0
    for stage in stages:
        if len(stage) > seen:
            kept.append(stage)
            seen = len(stage)
    return kept


def _reinitialise(leaves, seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    for leaf in leaves:
        if callable(getattr(leaf, "reset_parameters", None)):
            leaf.reset_parameters()
        else:
            with torch.no_grad():
                for parameter in leaf.parameters(recurse=False):
                    parameter.normal_(0, 0.02)


def _rank_similarity(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import stats

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(stats.spearmanr(a.ravel(), b.ravel()).statistic)


def randomisation_check(module, layer, images: np.ndarray, maps: np.ndarray, seed: int = 0) -> list[dict]:
    """Grad-CAM of ``images`` again after re-initialising the network from the top down (a deep copy of
    ``module``; the participant's own is left as it is): per stage, what was re-initialised and the mean Spearman
    rank correlation of the new maps with the trained ``maps``. Maps that a re-initialised head barely changes
    say little about what the model learned."""
    import copy

    found = []
    for name, leaves in zip(RANDOMISATION_STAGES, randomisation_stages(module, layer)):
        twin = copy.deepcopy(module)
        index = {id(m): k for k, m in enumerate(module.modules())}
        twin_modules = list(twin.modules())
        _reinitialise([twin_modules[index[id(m)]] for m in leaves], seed)
        twin_layer = twin_modules[index[id(layer)]]
        randomised = gradcam_heatmaps(twin, twin_layer, images)
        similarity = [_rank_similarity(a, b) for a, b in zip(maps, randomised)]
        found.append({"stage": name, "modules": len(leaves),
                      "parameters": int(sum(p.numel() for m in leaves for p in m.parameters(recurse=False))),
                      "rank_correlation": float(np.mean(similarity)) if similarity else None})
    return found
