"""Load a spec file: YAML with positions → environment overlay → `${VAR}` interpolation → pydantic → checks.

Every error names the file, line and column of the offending key or value, the field path and what to change,
so `bankflow validate` in CI points straight at the line to fix.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from bankflow.errors import Issue, SpecError
from bankflow.spec.models import VARIANT_KEYS, VARIANT_TAGS, PipelineSpec

Path_ = tuple[str | int, ...]
_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\$")


@dataclass
class Located:
    """Plain data from YAML plus the (line, column) of every key and value, keyed by path."""

    data: Any
    positions: dict[Path_, tuple[int, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class ResolvedSpec:
    """A validated spec for one environment, with what the renderers need beyond the model itself."""

    spec: PipelineSpec
    path: Path
    env: str | None
    secrets: tuple[str, ...]  # interpolated secret values: redacted from every display
    env_refs: dict[str, str]  # dotted field path -> the variable it came from (e.g. source.password -> PGPASSWORD)
    warnings: tuple[Issue, ...] = ()  # warnings and notes
    # Variables left as `${VAR}` text (load_spec(unset="defer")): fine to validate and render, not to run.
    unset: tuple[str, ...] = ()
    # (line, column) of every key and value, by path (("tables", 0, "columns", 2) …): where a finding points.
    positions: dict[Path_, tuple[int, int]] = field(default_factory=dict, compare=False, repr=False)

    def line_of(self, *path: str | int) -> int | None:
        """The spec line of `path` (the nearest enclosing value that has one), None when unknown."""
        for end in range(len(path), -1, -1):
            position = self.positions.get(tuple(path[:end]))
            if position is not None:
                return position[0]
        return None

    @property
    def notes(self) -> tuple[Issue, ...]:
        return tuple(i for i in self.warnings if i.severity == "note")

    def require_set(self, action: str = "run the pipeline") -> None:
        """Raise unless every variable is set: a deferred `${VAR}` is a placeholder, never a value to use."""
        if self.unset:
            from bankflow.errors import BankflowError

            raise BankflowError(f"cannot {action}: environment variable(s) {', '.join(self.unset)} not set "
                                "(the spec was loaded with unset='defer'); set them and load it again")

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def resolve_path(self, value: str) -> Path:
        """A path from the spec, relative to the spec's directory (normalised: no `..` in what is shown)."""
        path = Path(value.removeprefix("file://"))
        return Path(os.path.normpath(path if path.is_absolute() else (self.base_dir / path)))

    @property
    def state_dir(self) -> Path:
        return self.resolve_path(self.spec.state_dir)

    def redact(self, text: str) -> str:
        """`text` with every secret replaced by **** where it appears as a whole value (also URL-encoded or
        JSON-escaped): a secret inside a longer word is another word (`bankflow.log.redact_values`)."""
        from bankflow.log import redact_values

        return redact_values(text, self.secrets)


# ---------------------------------------------------------------- YAML with positions

def _position(text: str, index: int) -> tuple[int, int]:
    """(line, column), 1-based, of a character index in `text`."""
    line_start = text.rfind("\n", 0, index) + 1
    return text.count("\n", 0, index) + 1, index - line_start + 1


def _compose(text: str, file: str) -> yaml.Node | None:
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow anywhere, e.g. NUL
        line, column = _position(text, exc.position)
        if exc.character == 0:
            message = "the spec contains a NUL byte (character #x0000), which YAML does not allow"
            hint = "remove it: a NUL usually means a binary file, a truncated write or UTF-16 text"
        else:
            message = f"the spec contains the control character #x{exc.character:04X}, which YAML does not allow"
            hint = "remove it, or write it as an escape (\\x..) inside a double-quoted string"
        raise SpecError([Issue(file, line, column, "", message, hint)]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where: tuple[int | None, int | None] = (mark.line + 1, mark.column + 1) if mark else (None, None)
        problem = exc.problem or str(exc)
        raise SpecError(
            [Issue(file, *where, "", f"YAML syntax error: {problem}",
                   "check indentation, quoting and that every 'key: value' has a space after the colon")]
        ) from None
    except RecursionError:
        raise SpecError([Issue(file, None, None, "", "the spec is nested too deeply",
                               "a spec is a few levels of mappings and lists: flatten it")]) from None
    except yaml.YAMLError as exc:
        raise SpecError([Issue(file, None, None, "", f"YAML error: {' '.join(str(exc).split())}",
                               "check the file is a YAML mapping, e.g. a copy of pipelines/banking.yaml")]) from None


# A spec is a few hundred values; aliases that expand beyond this are a mistake (or a "billion laughs").
MAX_VALUES = 100_000


def _to_python(node: yaml.Node, path: Path_, out: dict[Path_, tuple[int, int]], file: str,
               active: frozenset[int] = frozenset()) -> Any:
    line, column = node.start_mark.line + 1, node.start_mark.column + 1
    if id(node) in active:
        raise SpecError([Issue(file, line, column, _dotted(path), "an alias refers to the value that contains it",
                               "a spec cannot be recursive: copy the values instead of aliasing their parent")])
    if len(out) >= MAX_VALUES:
        raise SpecError([Issue(file, line, column, _dotted(path),
                               f"the spec expands to more than {MAX_VALUES:,} values (through YAML aliases)",
                               "write the values out instead of nesting aliases of aliases")])
    out[path] = (line, column)
    if isinstance(node, yaml.MappingNode):
        inner = active | {id(node)}
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise SpecError([Issue(file, key_node.start_mark.line + 1, key_node.start_mark.column + 1,
                                       _dotted(path), "mapping keys must be plain strings",
                                       "write a plain key such as 'name:'")])
            key = key_node.value
            if key in result:
                raise SpecError([Issue(file, key_node.start_mark.line + 1, key_node.start_mark.column + 1,
                                       _dotted((*path, key)), f"duplicate key {key!r}",
                                       "remove one of the two entries")])
            out[(*path, key, "__key__")] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            result[key] = _to_python(value_node, (*path, key), out, file, inner)
        return result
    if isinstance(node, yaml.SequenceNode):
        inner = active | {id(node)}
        return [_to_python(item, (*path, i), out, file, inner) for i, item in enumerate(node.value)]
    # Scalars: let PyYAML's resolver decide (int, float, bool, null, str).
    try:
        return _scalar(node)
    except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:  # e.g. !!binary, a date 2024-13-45
        problem = exc.problem if isinstance(exc, yaml.MarkedYAMLError) and exc.problem else str(exc)
        raise SpecError([Issue(file, line, column, _dotted(path),
                               f"cannot read this value: {' '.join(problem.split())}",
                               "quote it to make it a plain string, e.g. '2024-01-31'")]) from None


def _scalar(node: yaml.Node) -> Any:
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def _read_text(path: Path, file: str, what: str = "spec") -> str:
    """The file's text, or a SpecError that says what is wrong with the file itself and what to do."""
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.suffix in (".yaml", ".yml"))[:3]
        raise SpecError([Issue(file, None, None, "", f"is a directory, not a {what} file",
                               "pass a pipeline YAML file" + (
                                   f", e.g. {path / inside[0]}" if inside else ", e.g. pipelines/banking.yaml"))])
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SpecError([Issue(file, None, None, "", f"{what} file not found",
                               "pass the path of a pipeline YAML, e.g. pipelines/banking.yaml")]) from None
    except PermissionError:
        raise SpecError([Issue(file, None, None, "", f"cannot read the {what} file: permission denied",
                               f"make it readable for this user, e.g. chmod u+r {file}, or run as its owner")]
                        ) from None
    except OSError as exc:
        raise SpecError([Issue(file, None, None, "", f"cannot read the {what} file: {exc.strerror or exc}",
                               "pass a readable pipeline YAML file")]) from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise SpecError([Issue(file, 1, 1, "", f"the {what} file is UTF-16 text", "save it as UTF-8")])
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise SpecError([Issue(file, line, column, "",
                               f"the {what} file is not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line})",
                               "save it as UTF-8")]) from None


def read_located(path: Path) -> Located:
    file = str(path)
    text = _read_text(path, file)
    node = _compose(text, file)
    if node is None:
        raise SpecError([Issue(file, 1, 1, "", "spec is empty", "start from pipelines/banking.yaml")])
    positions: dict[Path_, tuple[int, int]] = {}
    try:
        data = _to_python(node, (), positions, file)
    except RecursionError:
        raise SpecError([Issue(file, None, None, "", "the spec is nested too deeply",
                               "a spec is a few levels of mappings and lists: flatten it")]) from None
    if not isinstance(data, dict):
        raise SpecError([Issue(file, 1, 1, "", "a spec must be a mapping of keys (name, source, tables, …)",
                               "write top-level keys such as 'name:', 'source:' and 'tables:'")])
    return Located(data, positions)


def _dotted(path: Path_) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


# ---------------------------------------------------------------- environments

def _overlay(base: Located, env: str | None, file: str) -> Located:
    """Merge `environments.<env>` over the spec: mappings merge key by key, everything else is replaced."""
    data = dict(base.data)
    environments = data.get("environments") or {}
    if env is None:
        return base
    if not isinstance(environments, dict) or env not in environments:
        known = ", ".join(sorted(environments)) if isinstance(environments, dict) else ""
        line, column = base.positions.get(("environments", "__key__"), (None, None))
        raise SpecError([Issue(file, line, column, "environments", f"no environment named {env!r}",
                               f"choose one of: {known}" if known else "add an environments: section")])
    positions = dict(base.positions)
    overlay_prefix: Path_ = ("environments", env)

    def merge(target: Any, patch: Any, path: Path_) -> Any:
        retyped = isinstance(target, dict) and isinstance(patch, dict) and "type" in patch and (
            patch["type"] != target.get("type"))
        if isinstance(target, dict) and isinstance(patch, dict) and not retyped:
            merged = dict(target)
            for key, value in patch.items():
                merged[key] = merge(target.get(key), value, (*path, key))
            return merged
        # Replaced subtree (a new `type` replaces the whole variant): point its positions at the overlay's lines.
        for pos_path, pos in base.positions.items():
            if pos_path[: len(overlay_prefix) + len(path)] == (*overlay_prefix, *path):
                positions[path + pos_path[len(overlay_prefix) + len(path):]] = pos
        return patch

    overlay = environments[env] or {}
    if not isinstance(overlay, dict):
        line, column = base.positions.get(overlay_prefix, (None, None))
        raise SpecError([Issue(file, line, column, f"environments.{env}", "an environment overlay must be a mapping")])
    merged = merge(data, overlay, ())
    return Located(merged, positions)


# ---------------------------------------------------------------- interpolation

def load_dotenv(path: Path) -> dict[str, str]:
    """Parse a `.env` file (KEY=VALUE, optional quotes, # comments). The real environment wins."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for raw in _read_text(path, str(path), ".env").splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


@dataclass(frozen=True)
class UnsetVariable:
    """A `${VAR}` without a default whose variable is not set, kept as its own text (`unset="defer"`)."""

    variable: str
    field: str  # dotted path of the value that uses it
    line: int | None
    column: int | None


def _interpolate(located: Located, environ: dict[str, str], file: str, *, defer: bool = False,
                 ) -> tuple[Any, dict[str, str], list[Issue], list[UnsetVariable]]:
    """`defer`: an unset variable without a default keeps its `${VAR}` text (and is listed) instead of being an
    error; renderers show such a value as the reference it is (`${env:VAR}`, `env_var('VAR')`)."""
    issues: list[Issue] = []
    refs: dict[str, str] = {}
    unset: list[UnsetVariable] = []

    def walk(value: Any, path: Path_) -> Any:
        if isinstance(value, dict):
            return {k: walk(v, (*path, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, (*path, i)) for i, v in enumerate(value)]
        if not isinstance(value, str) or "$" not in value:
            return value
        whole = _VAR_RE.fullmatch(value)
        if whole and whole.group(1):
            refs[_dotted(path)] = whole.group(1)
        malformed = _malformed_reference(value)
        if malformed:
            line, column = located.positions.get(path, (None, None))
            issues.append(Issue(file, line, column, _dotted(path), malformed[0], malformed[1]))
            return value

        def substitute(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name, default = match.group(1), match.group(2)
            if name in environ and environ[name] != "":
                return environ[name]
            if default is not None:
                return default
            line, column = located.positions.get(path, (None, None))
            if defer:
                unset.append(UnsetVariable(name, _dotted(path), line, column))
                return match.group(0)
            issues.append(Issue(file, line, column, _dotted(path), f"environment variable {name} is not set",
                                f"export {name}=…, put it in a .env file next to the spec, "
                                f"or give a default: ${{{name}:-value}}"))
            return ""

        return _VAR_RE.sub(substitute, value)

    return walk(located.data, ()), refs, issues, unset


def _malformed_reference(value: str) -> tuple[str, str] | None:
    """(message, hint) when `${…}` is unterminated or nested, which would otherwise be taken literally."""
    for match in _VAR_RE.finditer(value):
        if match.group(2) and "${" in match.group(2):
            return (f"nested variable reference {match.group(0)}…: a default cannot name another variable",
                    "give a literal default (${VAR:-value}), or set the variable")
    if "${" in _VAR_RE.sub("", value):
        return ("unterminated or malformed variable reference (a '${' without a matching '}' or a name that is "
                "not letters, digits and underscores)", "write ${NAME} or ${NAME:-default}; write $$ for a literal $")
    return None


def _unset_notes(unset: list[UnsetVariable], file: str) -> dict[str, Issue]:
    """One note per variable (by name), at its first use, naming every value that needs it."""
    by_name: dict[str, list[UnsetVariable]] = {}
    for use in unset:
        by_name.setdefault(use.variable, []).append(use)
    notes = {}
    for name, uses in by_name.items():
        where = "; ".join(f"{u.field}, line {u.line}" if u.line else u.field for u in uses)
        notes[name] = Issue(file, uses[0].line, uses[0].column, "",
                            f"environment variable {name} is not set: apply needs it ({where})", "", "note")
    return notes


# ---------------------------------------------------------------- pydantic errors → issues

def _fields_of(model: type[BaseModel], path: tuple[Any, ...]) -> list[str]:
    """The allowed keys at `path` (for "did you mean"), following nested models and lists.

    `path` is pydantic's raw error location: in a discriminated union it holds the variant's tag (warehouse →
    snowflake → key), which picks that variant's keys rather than the first variant's.
    """
    current: list[type[BaseModel]] = [model]
    for part in path:
        if isinstance(part, int):
            continue
        tagged = [m for m in current if any(k in m.model_fields and m.model_fields[k].default == part
                                            for k in VARIANT_KEYS)]
        if len(current) > 1 and tagged:
            current = tagged
            continue
        info = next((f for m in current for n, f in m.model_fields.items() if (f.alias or n) == part), None)
        if info is None:
            return []
        current = _models_in(info.annotation)
    if len(current) == 1:
        return [f.alias or n for n, f in current[0].model_fields.items()]
    return []


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _got(value: Any, variable: str | None) -> str:
    return f"got the value of ${{{variable}}}" if variable else f"got {value!r}"


def _unknown_key(key: str, parent: tuple[Any, ...]) -> tuple[str, str]:
    """(message, hint) for a key the model does not have, with the closest allowed one."""
    allowed = _fields_of(PipelineSpec, parent)
    close = difflib.get_close_matches(key, [a for a in allowed if a != key], n=1)
    hint = (f"did you mean {close[0]!r}? " if close else "") + (
        f"allowed keys here: {', '.join(allowed)}" if allowed else "")
    return f"unknown key {key!r}", hint


def _unknown_variant(error: Any, loc: tuple[Any, ...], message: str) -> tuple[tuple[Any, ...], str, str]:
    """(loc, message, hint) for a `type:`/`engine:` naming no registered variant."""
    ctx = error.get("ctx") or {}
    key = str(ctx.get("discriminator", "")).strip("'").removeprefix("_").removesuffix("_of()")
    if key in VARIANT_KEYS and key != "type":  # a callable discriminator: name the key it reads
        loc = (*loc, key)
        expected = [tag.strip() for tag in str(ctx.get("expected_tags", "")).split(",")]
        message = f"{key} {ctx.get('tag')!r} is not known: input should be {' or '.join(expected)}"
    return loc, message, f"{key or 'type'} must be one of the listed values"


def _issues_from_validation(exc: ValidationError, located: Located, file: str,
                            refs: dict[str, str] | None = None,
                            unset: list[UnsetVariable] | None = None) -> list[Issue]:
    """`refs`: field path -> the variable its value came from; such values are named, never echoed (secrets).

    `unset`: values kept as `${VAR}` text (deferred); where such a value fails validation (an int, a choice, an
    identifier), the issue is that the variable is not set, even when validating only.
    """
    refs = refs or {}
    deferred: dict[str, list[str]] = {}
    for use in unset or []:
        deferred.setdefault(use.field, []).append(use.variable)
    issues = []
    for error in exc.errors():
        loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p in VARIANT_TAGS))
        kind = error["type"]
        message = str(error["msg"]).removeprefix("Value error, ")
        hint = ""
        position = None
        if kind == "value_error":
            # Our validators raise errors carrying a hint, and model-level ones the sub-path they are about.
            cause = (error.get("ctx") or {}).get("error")
            hint = getattr(cause, "hint", "") or ""
            loc = (*loc, *getattr(cause, "at", ()))
        dotted = _dotted(loc)
        if kind == "extra_forbidden":
            message, hint = _unknown_key(str(loc[-1]), tuple(error["loc"])[:-1])
            position = located.positions.get((*loc, "__key__"))
        elif kind == "missing":
            message = "required field is missing"
            hint = f"add '{loc[-1]}:' here"
            # At the key of the mapping it is missing from (`lake:`), not at that mapping's first entry.
            position = located.positions.get((*loc[:-1], "__key__"))
        elif kind == "literal_error":
            hint = "use one of the listed values"
        elif kind.endswith("_type") or kind.endswith("_parsing"):
            hint = _got(error.get("input"), refs.get(dotted))
        elif kind == "union_tag_invalid":
            loc, message, hint = _unknown_variant(error, loc, message)
            dotted = _dotted(loc)
        if not hint and isinstance(error.get("input"), (str, int, float, bool)):
            hint = _got(error["input"], refs.get(dotted))
        # The closest located ancestor (a missing field points at its parent mapping).
        probe: tuple[Any, ...] | None = loc
        while position is None and probe is not None:
            position = located.positions.get(probe)
            probe = probe[:-1] if probe else None
        line, column = position or (None, None)
        variables = deferred.get(dotted) or next(
            (v for f, v in deferred.items() if kind.startswith("union_tag") and f.startswith(dotted + ".")), None)
        if variables:
            names = ", ".join(dict.fromkeys(variables))
            message = f"environment variable {names} is not set, and this value cannot be checked without it"
            hint = (f"export {variables[0]}=…, put it in a .env file next to the spec, "
                    f"or give a default: ${{{variables[0]}:-value}}")
        issues.append(Issue(file, line, column, dotted, message, hint))
    return issues


# ---------------------------------------------------------------- entry point

def load_spec(
    path: str | os.PathLike[str],
    env: str | None = None,
    environ: dict[str, str] | None = None,
    *,
    check_dbt: bool = True,
    unset: str = "error",
) -> ResolvedSpec:
    """Load, overlay, interpolate and validate a spec; raise `SpecError` listing every problem found.

    `unset`: what an unset `${VAR}` without a default is. "error" (the default; what running a pipeline needs)
    or "defer": the value keeps its `${VAR}` text, a note says the variable must be set for `apply`, and
    `ResolvedSpec.unset` names it (for `validate` and offline `plan`, e.g. in CI without production secrets).
    A deferred value that must be typed (a port, a choice, an identifier) is still an error.
    """
    from bankflow.spec.checks import check_spec

    if unset not in ("error", "defer"):
        raise ValueError(f"unset must be 'error' or 'defer', not {unset!r}")
    spec_path = Path(path)
    file = str(path)
    located = read_located(spec_path)
    if env is None and isinstance(located.data.get("default_env"), str):
        env = located.data["default_env"]
    merged = _overlay(located, env, file)
    variables = {**load_dotenv(spec_path.parent / ".env"), **(environ if environ is not None else os.environ)}
    environments = merged.data.pop("environments", None) or {}
    data, refs, issues, deferred = _interpolate(merged, variables, file, defer=unset == "defer")
    if issues:
        raise SpecError(issues)
    notes = _unset_notes(deferred, file)
    data["environments"] = environments if isinstance(environments, dict) else {}
    try:
        spec = PipelineSpec.model_validate(data)
    except ValidationError as exc:
        errors = _issues_from_validation(exc, merged, file, refs, deferred)
        failed = {i.field for i in errors}
        failed_names = {u.variable for u in deferred
                        if u.field in failed or any(u.field.startswith(f + ".") for f in failed)}
        raise SpecError(errors + [n for name, n in notes.items() if name not in failed_names]) from None
    # A deferred `${VAR}` is a placeholder, not a secret (nor part of one): neither redacted nor checked.
    placeholders = {f"${{{u.variable}}}" for u in deferred}
    found = [s for s in _secret_values(spec) if s.value and not any(p in s.value for p in placeholders)]
    secrets = tuple(sorted({s.value for s in found}))
    names = tuple(dict.fromkeys(u.variable for u in deferred))
    resolved = ResolvedSpec(spec, spec_path.resolve(), env, secrets, refs, unset=names)
    problems = check_spec(resolved, merged.positions, check_dbt=check_dbt, file=file)
    problems += _check_directories(resolved, merged.positions, file)
    problems += _short_secrets(found, merged.positions, file)
    if any(p.severity == "error" for p in problems):
        raise SpecError(problems + list(notes.values()))
    return ResolvedSpec(spec, spec_path.resolve(), env, secrets, refs, tuple(problems) + tuple(notes.values()),
                        unset=names, positions=merged.positions)


def _check_directories(resolved: ResolvedSpec, positions: dict[Path_, tuple[int, int]], file: str) -> list[Issue]:
    """Local directories bankflow creates must not be (or be under) an existing file."""
    issues = []
    candidates: list[tuple[str, Path]] = [("state_dir", resolved.state_dir)]
    if resolved.spec.lake.scheme == "file":
        candidates.append(("lake.url", resolved.resolve_path(resolved.spec.lake.url)))
    for field_name, directory in candidates:
        probe = directory
        while not probe.exists() and probe.parent != probe:
            probe = probe.parent
        if probe.exists() and not probe.is_dir():
            line, column = positions.get(tuple(field_name.split(".")), (None, None))
            what = "is a file" if probe == directory else f"is under {probe}, which is a file"
            issues.append(Issue(file, line, column, field_name, f"{directory} {what}, not a directory",
                                f"point {field_name} at a directory, or move {probe} away"))
    return issues


# A secret shorter than this cannot be told apart from ordinary words in a message, so it cannot be redacted.
MIN_SECRET_LENGTH = 8
_SHORT_SECRET_HINT = "a secret this short cannot be redacted reliably: use a longer value"
# URL user-info (`scheme://user:password@host`): always a secret, whatever field the URL is in.
_URL_USERINFO_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://([^/?#@\s]+)@")
# Host lists without a scheme (`user:password@host:9092,host2:9092`).
_ITEM_USERINFO_RE = re.compile(r"(?:^|,)\s*([^/?#@\s,]+)@")


@dataclass(frozen=True)
class SecretValue:
    """A secret found in the spec: the value, the field path it is in, and what it is (for messages)."""

    path: Path_
    value: str
    what: str


def _userinfo_secrets(path: Path_, value: str) -> list[SecretValue]:
    """The user-info of every URL in a (non-secret) string: the whole `user:password` and the password alone."""
    userinfos = [m.group(1) for m in _URL_USERINFO_RE.finditer(value)]
    if str(path[-1]).endswith("servers"):
        userinfos += [m.group(1) for m in _ITEM_USERINFO_RE.finditer(value)]
    found = []
    for userinfo in dict.fromkeys(userinfos):
        what = f"the user-info (user:password@) of the URL in {_dotted(path)}"
        found.append(SecretValue(path, userinfo, what))
        password = userinfo.partition(":")[2]
        if password:
            found.append(SecretValue(path, password, f"the password in {what.removeprefix('the ')}"))
    return found


def _secret_values(model: BaseModel, path: Path_ = ()) -> list[SecretValue]:
    """Values of every field marked secret in the schema, and the user-info of every URL, anywhere in the spec."""
    found: list[SecretValue] = []
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        here = (*path, info.alias or name)
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if isinstance(value, str):
            found.extend([SecretValue(here, value, _dotted(here))] if extra.get("secret")
                         else _userinfo_secrets(here, value))
        elif isinstance(value, BaseModel):
            found.extend(_secret_values(value, here))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, BaseModel):
                    found.extend(_secret_values(item, (*here, index)))
    return found


def _short_secrets(secrets: list[SecretValue], positions: dict[Path_, tuple[int, int]], file: str) -> list[Issue]:
    """An error for each secret too short to redact (its length only: the value itself is never shown)."""
    issues = []
    for secret in secrets:
        if len(secret.value) < MIN_SECRET_LENGTH:
            line, column = positions.get(secret.path, (None, None))
            issues.append(Issue(file, line, column, _dotted(secret.path),
                                f"{secret.what} is a secret of {len(secret.value)} character(s), "
                                f"fewer than {MIN_SECRET_LENGTH}", _SHORT_SECRET_HINT))
    return issues
