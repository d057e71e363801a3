"""Model versions on disk: the SFT base, RLHF policy adapters (``rlhf-vN``) and reward models
(``reward-vN``; a reward model whose card has ``"role": "judge"`` — named ``judge-vN`` — only grades
policies in the evaluation and is never trained against).

A version is a directory in standard PEFT format (``adapter_config.json`` +
``adapter_model.safetensors``; a reward model adds ``score_head.safetensors``) with a
``card.json``: kind, parent, created, training config, data, metrics, and the SHA-256 of every
file. Versions shipped inside the package (read-only) and versions trained into
``<data dir>/versions`` are listed together, each with its ``source``.

Names: shipped and trained versions share one name space. A new version's name must be free in both
(:meth:`Registry.check_new_name`; :meth:`Registry.next_name` counts both), so a pipeline never publishes a name a
shipped version has. A data dir that already holds a name a LATER release ships (a user's pipeline-made
``reward-v1``, then a shipped ``reward-v1``) keeps both: the shipped one keeps the name, and the user's is listed
as ``<name>-local`` (``-local2``, … when that is taken; same directory, same version number, a warning says so) —
neither is ignored, and nothing on disk is renamed. Publishing is atomic: copy into a temporary directory
on the same file system, fsync, rename. A partial or corrupt version is reported and skipped,
never loaded.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import hashlib
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import atomic_dir, read_manifest, sha256_file, verify_files

log = logging.getLogger(__name__)

PACKAGE_VERSIONS = Path(__file__).parent / "versions"
SFT = "sft"
KINDS = ("policy", "reward")
PREFIX = {"policy": "rlhf", "reward": "reward"}
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
REQUIRED_FILES = {"policy": ("adapter_config.json", "adapter_model.safetensors"),
                  "reward": ("adapter_config.json", "adapter_model.safetensors", "score_head.safetensors")}


# the files whose content decides a reward version's scores (see Version.reward_identity)
REWARD_SCORE_FILES = ("adapter_model.safetensors", "score_head.safetensors", "safety_term.npz", "safety_term.json")


def reward_identity(card: dict) -> str | None:
    """SHA-256 over every file that decides a reward version's scores (its card's ``files`` hashes of the
    adapter, the score head and a composed version's safety term), so two rewards that share an adapter
    (reward-v0 and the composed reward-v1..v3) are told apart. Policy cards record it as
    ``reward_model_identity``; None when the card lists no adapter hash."""
    files = card.get("files", {})
    if not files.get("adapter_model.safetensors"):
        return None
    parts = [f"{n}={files[n]}" for n in REWARD_SCORE_FILES if files.get(n)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


class RegistryError(ValueError):
    """A bad name, an unknown version, or a version that cannot be published."""


@dataclass
class Version:
    name: str
    kind: str  # "policy" or "reward"
    path: Path | None  # None for the SFT base
    card: dict = field(default_factory=dict)
    source: str = "data"  # "base", "package" or "data"

    @property
    def is_base(self) -> bool:
        return self.path is None

    @property
    def content_hash(self) -> str:
        """Short SHA-256 of the adapter weights ("base" for SFT) — recorded with every vote."""
        if self.path is None:
            return "base"
        return self.card.get("files", {}).get("adapter_model.safetensors", "")[:16]

    @property
    def reward_identity(self) -> str | None:
        """See :func:`reward_identity`."""
        return reward_identity(self.card)

    @property
    def number(self) -> int:
        m = re.search(r"-v(\d+)(?:-local\d*)?$", self.name)
        return int(m.group(1)) if m else -1

    @property
    def label(self) -> str:
        """``name (source)``, e.g. ``reward-v1 (package)`` or ``reward-v1-local (data)``: for lists shown to people."""
        return f"{self.name} ({self.source})"


def local_alias(name: str, taken) -> str:
    """The name a data-dir version is listed under when a shipped version has its name: ``<name>-local``, or
    ``-local2``, ``-local3``, … when that is in ``taken`` too."""
    for i in range(1, 1000):
        alias = f"{name}-local{i if i > 1 else ''}"
        if alias not in taken and NAME_RE.match(alias):
            return alias
    raise RegistryError(f"no free alias for {name!r}")


def check_name(name: str) -> str:
    """Refuse names that could escape the versions directory or are not ours (e.g. ``../x``)."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise RegistryError(f"invalid version name {name!r}: use lower-case letters, digits, '-' and '_' "
                            "(e.g. rlhf-v1, reward-v0)")
    return name


def validate_version_dir(path: Path) -> dict:
    """Return the card of a complete, uncorrupted version directory, or raise RegistryError."""
    card_path = path / "card.json"
    card = read_manifest(card_path, RegistryError, f"{path}: no card.json (partial or foreign directory)")
    kind = card.get("kind")
    if kind not in KINDS:
        raise RegistryError(f"{card_path}: kind must be one of {KINDS}, got {kind!r}")
    for name in REQUIRED_FILES[kind]:
        if not (path / name).is_file():
            raise RegistryError(f"{path}: missing {name}")
    verify_files(path, card.get("files", {}), RegistryError, "{folder}: missing {name} listed in card.json",
                 "{file}: content does not match its SHA-256 in card.json (corrupt)")
    try:
        json.loads((path / "adapter_config.json").read_text())
        from safetensors import safe_open

        for name in REQUIRED_FILES[kind]:
            if name.endswith(".safetensors"):
                with safe_open(str(path / name), framework="pt") as fh:
                    list(fh.keys())
    except Exception as exc:  # noqa: BLE001 - any parse failure means corrupt
        raise RegistryError(f"{path}: corrupt adapter files ({exc})") from exc
    return card


class Registry:
    """Lists, validates and publishes versions from the package and the data directory."""

    def __init__(self, versions_dir: Path, package_dir: Path | None | str = "shipped"):
        self.versions_dir = Path(versions_dir)
        if package_dir == "shipped":  # resolved at call time; RLHF_ARENA_PACKAGE_VERSIONS overrides ("" = none)
            env = os.environ.get("RLHF_ARENA_PACKAGE_VERSIONS")
            package_dir = PACKAGE_VERSIONS if env is None else (Path(env) if env else None)
        self.package_dir = Path(package_dir) if package_dir else None
        self.problems: dict[str, str] = {}
        self._cache: dict[tuple, dict] = {}
        self._aliases: dict[Path, str] = {}  # data-dir versions listed under <name>-local (warned once)

    # -- listing --------------------------------------------------------------------------
    def _scan(self) -> dict[str, Version]:
        found: dict[str, Version] = {}
        problems: dict[str, str] = {}
        roots = [(source, root, sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                                       and NAME_RE.match(p.name)))  # ".tmp-…" of an interrupted publish: hidden
                 for source, root in (("package", self.package_dir), ("data", self.versions_dir))
                 if root is not None and root.is_dir()]
        dir_names = {p.name for _, _, paths in roots for p in paths}
        for source, root, paths in roots:
            for path in paths:
                try:
                    # re-validate (hash every file) only when a file changed since the last scan
                    stamp = (str(path),) + tuple(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns)
                                                        for f in path.iterdir()))
                    card = self._cache.get(stamp) or validate_version_dir(path)
                    self._cache[stamp] = card
                except (RegistryError, OSError) as exc:
                    problems[path.name] = str(exc)
                    continue
                name = path.name
                if name in found and found[name].source == "package" and source == "data":
                    name = local_alias(name, found.keys() | dir_names)  # a later release shipped this name
                    if self._aliases.get(path) != name:
                        log.warning("%s has the name of a shipped version (%s): listed as %s", path,
                                    found[path.name].path, name)
                        self._aliases[path] = name
                if name in found:
                    problems[name] = f"{path}: duplicate of {found[name].path}; ignored"
                    continue
                found[name] = Version(name, card["kind"], path, card, source)
        for name, why in problems.items():
            if self.problems.get(name) != why:
                log.warning("skipping version %s: %s", name, why)
        self.problems = problems
        return found

    def list(self, kind: str | None = "policy") -> list[Version]:
        """Versions of one kind (policy includes the SFT base first), oldest first."""
        versions = list(self._scan().values())
        if kind:
            versions = [v for v in versions if v.kind == kind]
        versions.sort(key=lambda v: (v.kind, v.number, v.name))
        if kind in (None, "policy"):
            versions.insert(0, Version(SFT, "policy", None, {"kind": "policy", "description": "the SFT base model"}, "base"))
        return versions

    def names(self, kind: str | None = "policy") -> list[str]:
        return [v.name for v in self.list(kind)]

    def get(self, name: str, kind: str | None = None) -> Version:
        check_name(name)
        for v in self.list(None):
            if v.name == name and (kind is None or v.kind == kind):
                return v
        if name in self.problems:
            raise RegistryError(f"version {name!r} is broken and was skipped: {self.problems[name]}")
        known = ", ".join(self.names(kind)) or "none"
        raise RegistryError(f"unknown {kind or 'version'} {name!r}; known: {known}")

    def current(self, kind: str = "policy", base_model: str | None = None, role: str | None = None,
                prefer: str | None = None, among=None) -> Version | None:
        """THE rule for "which version of a kind is current" (the arena's newest policy, the pipeline's
        policy and reward model to continue from, the default reward model). Candidates: versions of
        ``kind`` (never the SFT base: None when there is no other), trained on ``base_model`` when given
        (a card that names no base fits any), of card ``role`` when given (``"reward"``: any reward model
        that is not a judge; ``"judge"``: judges only), and named in ``among`` when given (e.g. the
        policies a server can load). ``prefer`` wins when it is a candidate (the shipped ``reward-v0``);
        otherwise the highest version number, then the newest ``created``."""
        fits = [v for v in self.list(kind) if not v.is_base
                and (base_model is None or v.card.get("base_model") in (None, base_model))
                and (role is None or (v.card.get("role", "reward") == role))
                and (among is None or v.name in among)]
        for v in fits:
            if prefer and v.name == prefer:
                return v
        return max(fits, key=lambda v: (v.number, v.card.get("created", ""))) if fits else None

    def newest(self, kind: str = "policy") -> Version | None:
        """The current version of ``kind`` for any base (:meth:`current`)."""
        return self.current(kind)

    def next_name(self, kind: str = "policy", prefix: str | None = None) -> str:
        """The next free ``<prefix>-vN`` (default prefix: ``rlhf`` for policies, ``reward`` for reward models;
        ``prefix="dpo"``: the next ``dpo-vN``, still a policy version)."""
        prefix = prefix or PREFIX[kind]
        taken = [v.number for v in self.list(kind) if v.name.startswith(prefix + "-v")]
        taken += [int(m.group(1)) for n in self.problems if (m := re.match(rf"{prefix}-v(\d+)$", n))]
        return f"{prefix}-v{max(taken, default=-1) + 1}"

    # -- publishing -----------------------------------------------------------------------
    def check_new_name(self, name: str, hint: str = "") -> str:
        """``name`` if it is valid and no version has it yet (versions are never overwritten); else RegistryError."""
        name = check_name(name)
        if name == SFT or any(v.name == name for v in self.list(None)):
            raise RegistryError(f"version {name!r} exists already in {self.versions_dir}; versions are never "
                                f"overwritten" + (f": {hint}" if hint else ""))
        return name

    def publish(self, src_dir: Path, card: dict, name: str | None = None) -> Version:
        """Copy ``src_dir`` in as a new version, atomically. Returns the published version."""
        kind = card.get("kind")
        if kind not in KINDS:
            raise RegistryError(f"card kind must be one of {KINDS}")
        name = self.check_new_name(name or self.next_name(kind))
        src_dir = Path(src_dir)
        for required in REQUIRED_FILES[kind]:
            if not (src_dir / required).is_file():
                raise RegistryError(f"cannot publish {name}: {src_dir} has no {required}")
        final = self.versions_dir / name
        with atomic_dir(final, prefix=f".tmp-{name}-") as tmp:  # fsync, then rename: fails if `final` exists
            files = {}
            for f in sorted(src_dir.iterdir()):
                if f.is_file() and f.name != "card.json":
                    shutil.copyfile(f, tmp / f.name)
                    files[f.name] = sha256_file(tmp / f.name)
            card = dict(card, name=name, files=files)
            card.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
            (tmp / "card.json").write_text(json.dumps(card, indent=2, sort_keys=True, default=str))
            validate_version_dir(tmp)
        log.info("published %s at %s", name, final)
        return Version(name, kind, final, card, "data")

    def clean_partial(self, min_age_s: float = 0.0) -> list[Path]:
        """Remove leftovers of interrupted publishes (hidden ``.tmp-*`` directories, never listed or served)
        older than ``min_age_s`` seconds — a younger one may belong to a publish in progress elsewhere."""
        removed = []
        if self.versions_dir.is_dir():
            for path in self.versions_dir.glob(".tmp-*"):
                try:
                    if min_age_s and time.time() - path.stat().st_mtime <= min_age_s:
                        continue
                except OSError:
                    continue
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        return removed


class StagedRegistry(Registry):
    """The data dir's registry plus one not-yet-published candidate (for the evaluation only)."""

    def __init__(self, base: Registry, name: str, path: Path, card: dict):
        super().__init__(base.versions_dir, base.package_dir)
        files = {"adapter_model.safetensors": sha256_file(path / "adapter_model.safetensors")}
        self.candidate = Version(check_name(name), "policy", Path(path), dict(card, files=files, name=name),
                                 "candidate")

    def _scan(self):
        found = super()._scan()
        found[self.candidate.name] = self.candidate
        return found


def publish_to(src_dir: Path, card: dict, versions_dir: Path, name: str | None = None, publish_dir: str | Path = "",
               replace: bool = False) -> Version:
    """Publish a trained adapter: into the data dir's ``versions_dir``, or — ``publish_dir``, for versions
    shipped with the package — into that folder alone (``replace`` removes a version of that name there
    first; the data dir's versions are never overwritten). A shipped version is made readable by all."""
    if publish_dir:
        registry = Registry(Path(publish_dir), package_dir=None)
        if replace and name and (Path(publish_dir) / check_name(name)).exists():
            shutil.rmtree(Path(publish_dir) / name)
    else:
        if replace:
            raise ValueError("--replace only works with --publish-dir; registry versions are never overwritten")
        registry = Registry(versions_dir)
    version = registry.publish(Path(src_dir), card, name=name)
    if publish_dir:  # shipped with the package: readable by everyone (mkdtemp made it 0700)
        os.chmod(version.path, 0o755)
    return version


def software_versions() -> dict:
    """torch / transformers / peft versions, for a version's card."""
    import peft
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}
