"""Codabench's fact sheet: the questions ``competition.yaml`` asks on every submission's upload form.

The format, as Codabench reads it (commit c7dbc75 of ``../shared/codabench``): the v2 unpacker copies
``fact_sheet`` as it is; the server's ``validate_fact_sheet`` (``api/serializers/competitions.py``)
wants a mapping of questions, each with exactly the fields ``key``, ``type``, ``title``, ``selection``,
``is_required`` and ``is_on_leaderboard``, ``key`` equal to the question's name, ``type`` one of
checkbox, text and select. The rest is what makes the form and the answers work, read from the same
commit: the upload form (``submission_upload.tag``) and the leaderboard compare ``is_required`` and
``is_on_leaderboard`` with the *string* "true"; the form answers a checkbox with true or false, a
text or select with its trimmed text, except that "true" and "false" become booleans; the server
(``SubmissionCreationSerializer.validate``) wants the answers' keys to be the questions', each
answer in ``selection`` when that is not empty, and a required one not empty.

``question_problems`` lists what is wrong with a fact sheet (``bundle check``); ``answer_problems``
what the server would refuse in a submission's answers.
"""

from __future__ import annotations

FIELDS = ("key", "type", "title", "selection", "is_required", "is_on_leaderboard")
TYPES = ("checkbox", "text", "select")
FLAGS = ("true", "false")
FORM_RESERVED_PREFIX = "task-"   # the upload form drops answers whose name starts so (its task checkboxes)


def question_problems(fact_sheet) -> list[tuple[str, str, str]]:
    """(level, where, message) for each problem of a ``fact_sheet``; level "error" or "warning".
    An absent or empty fact sheet is none (Codabench stores None)."""
    if not fact_sheet:
        return []
    if not isinstance(fact_sheet, dict):
        return [("error", "fact_sheet", "must be a mapping of questions (Codabench: \"Not valid JSON\")")]
    problems = []
    for name, question in fact_sheet.items():
        where = f"fact_sheet.{name}"
        if not isinstance(question, dict):
            problems.append(("error", where, f"must be a mapping with the fields {list(FIELDS)}"))
            continue
        fields = set(question)
        if fields != set(FIELDS):
            problems.append(("error", where, f"must have exactly the fields {list(FIELDS)}; missing "
                             f"{sorted(set(FIELDS) - fields)}, unknown {sorted(fields - set(FIELDS))}"))
            continue
        problems += [(level, where, message) for level, message in _question(name, question)]
    return problems


def _question(name, question: dict) -> list[tuple[str, str]]:
    found = []
    if question["key"] != name:
        found.append(("error", f"key {question['key']!r} does not match the question's name {name!r}"))
    if not isinstance(name, str) or not name or any(c.isspace() for c in name):
        found.append(("error", f"the name {name!r} must be a non-empty string without whitespace"))
    elif name.startswith(FORM_RESERVED_PREFIX):
        found.append(("error", f"the upload form drops answers whose name starts with {FORM_RESERVED_PREFIX!r}"))
    if question["type"] not in TYPES:
        found.append(("error", f"type must be one of {list(TYPES)}, got {question['type']!r}"))
    if not isinstance(question["title"], str) or not question["title"].strip():
        found.append(("error", "title must be a non-empty string"))
    for flag in ("is_required", "is_on_leaderboard"):
        if question[flag] not in FLAGS:
            found.append(("error", f"{flag} must be the string \"true\" or \"false\" (Codabench compares it with "
                          f"the string \"true\"), got {question[flag]!r}"))
    found += _selection(question)
    return found


def _selection(question: dict) -> list[tuple[str, str]]:
    kind, selection = question["type"], question["selection"]
    if kind == "checkbox" and selection != [True, False]:
        return [("error", f"a checkbox's selection must be [true, false] (its answers), got {selection!r}")]
    if kind == "text" and selection != "":
        return [("error", f"a text question's selection must be \"\" (any answer), got {selection!r}")]
    if kind != "select":
        return []
    if not isinstance(selection, list) or not selection or not all(isinstance(v, str) for v in selection):
        return [("error", f"a select's selection must be a non-empty list of strings, got {selection!r}")]
    found = []
    if len(set(selection)) != len(selection):
        found.append(("error", "the selection lists an option twice"))
    for option in selection:
        if option in FLAGS:
            found.append(("error", f"option {option!r}: the form sends it as a boolean, which the server then "
                          "refuses as not in the selection"))
        elif option != option.strip():
            found.append(("error", f"option {option!r}: the form trims answers, so it can never be chosen"))
        elif "," in option:
            found.append(("warning", f"option {option!r}: Codabench's competition editor splits options at "
                          "commas when the competition is saved from its page"))
    if question["is_required"] == "true" and selection[0] != "":
        found.append(("warning", f"the form preselects the first option ({selection[0]!r}), so the question is "
                      "answered without a choice; put \"\" first to make participants choose"))
    return found


def answer_problems(fact_sheet: dict, answers: dict) -> list[str]:
    """What Codabench's server refuses in a submission's fact-sheet answers (none when ``answers`` is
    empty: the server then checks nothing)."""
    if not answers:
        return []
    if set(answers) != set(fact_sheet):
        return [f"the answers' keys {sorted(answers)} are not the questions' {sorted(fact_sheet)}"]
    problems = []
    for key, value in answers.items():
        question = fact_sheet[key]
        if question["selection"] and value not in question["selection"]:
            problems.append(f"{key}: {value!r} is not one of {question['selection']}")
        elif not value and question["is_required"] == "true" and not isinstance(value, bool):
            problems.append(f"{key}: {question['title']!r} requires an answer")
    return problems
