"""Command-line errors before Hydra starts: an unknown option, a misspelt key, bad override syntax.

``run.py`` calls :func:`check_command_line` first. It composes ``conf/train.yaml`` with the command line's
overrides (for a sweep, the first value of each swept key) the way Hydra will, and turns the three
mistakes a user makes most into one ``error:`` line and exit code 2, like every other user error:

* an option that does not exist (``experiment=chsnet_dmeo``): names the group and lists its options;
* a key that does not exist (``trainer.max_epoch=3``): names it, suggests the closest existing key and
  says how to add a new one (``+key=value``);
* an override Hydra cannot parse (``fold=[``);
* a key or an experiment that moved (:data:`MOVED_KEYS`, :data:`RETIRED_EXPERIMENTS`): names the new one;
* a pipeline's pre-flight check that fails (``pipeline.preflight``, :mod:`histo_lightning.utils.preflight`:
  e.g. FMB clustering with an encoder whose weights are not available offline), before torch is
  imported, so such a run ends within seconds;
* a folder the run must write that cannot be written: the run folder (``hydra.run.dir``, or
  ``hydra.sweep.dir`` with ``-m``), ``paths.cache_dir`` and ``paths.split_dir`` (a path through a file, a
  read-only file system): checked by creating and removing a scratch folder in the nearest existing
  folder, so nothing is left behind.

``python run.py --help`` (or ``-h``) prints :func:`usage`: the command line, the experiments grouped by
paper with one line each (from the method packages, :mod:`histo_lightning.methods`, and each experiment
file's first comment line) and where the README is; Hydra's own help is ``--hydra-help``.

Anything else, and every command with other Hydra flags (``--cfg``, ``--info``, ``-cn``, ...), is left to
Hydra as before; ``HYDRA_FULL_ERROR=1`` skips the check so that Hydra's own traceback shows. In a
sweep, every option of a swept config group is checked (``experiment=chsnet_demo,chsnet_dmeo``); other
swept keys with their first value only (the rest are checked by Hydra when their job starts).
"""

from __future__ import annotations

import difflib
import os
import sys
import tempfile
import textwrap
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

CONF = Path(__file__).resolve().parents[1] / "conf"
README = CONF.parent / "README.md"
CONFIG_NAME = "train"
_PASS_FLAGS = ("-m", "--multirun", "-r", "--run")


#: keys that moved: ``old`` → the key that holds its settings now (None: removed, see the note); a key
#: below an old one moves with it (``rakhlin.views.seed`` → ``method.views.seed``)
MOVED_KEYS: dict[str, str | None] = {
    # a method's settings: one method: node per experiment (Rakhlin's were top-level, CHS-Net's in model)
    "rakhlin": "method",
    **{
        f"model.{key}": f"method.{key}"
        for key in (
            "schedule",
            "schedules",
            "cascade",
            "hard_example_mining",
            "mining",
            "refined_sampling",
            "detection",
        )
    },
    # Li et al.'s: mining in a top-level hnm:, the training protocol in the dataset config
    "hnm": "method.hnm",
    "dataset.protocol": "method.protocol",
    "task": None,
}
MOVED_KEY_NOTES = {
    "task": "python run.py always runs the stage runner on `pipeline` (choose pipeline=<name>)",
}

#: experiments replaced by a sweep: name → the command that runs it now
_TABLE10 = "python run.py -m experiment=smse_paip hparams_search=smse_table10"
RETIRED_EXPERIMENTS: dict[str, str] = {
    f"smse_paip_{net}_{loss}": (
        f"{_TABLE10} (this cell alone: experiment=smse_paip model=smse_{net} "
        f"embedding_loss={embedding})"
    )
    for net in ("pnn2", "googlenet", "resnet")
    for loss, embedding in (("ce", "none"), ("pair", "contrastive"), ("triplet", "triplet"))
    if (net, loss) != ("pnn2", "triplet")
}


def moved(overrides: Sequence[str]) -> str | None:
    """The one-line error for an override of a key or an experiment that moved, or None."""
    for text in overrides:
        key, sep, value = text.lstrip("+~").partition("=")
        old = next((k for k in MOVED_KEYS if key == k or key.startswith(k + ".")), None)
        if old is not None:
            new = MOVED_KEYS[old]
            if new is None:
                return f"{old}: removed; {MOVED_KEY_NOTES.get(old, '')}".rstrip("; ")
            return (
                f"{key}: moved to {new}{key[len(old) :]} (a method's settings are one "
                "`method:` node per experiment, docs/architecture.md)"
            )
        if key == "experiment" and sep:
            for name in value.split(","):
                if name.strip() in RETIRED_EXPERIMENTS:
                    return (
                        f"experiment={name.strip()}: replaced by a sweep: "
                        f"{RETIRED_EXPERIMENTS[name.strip()]}"
                    )
    return None


class CommandLineError(Exception):
    """A command-line mistake, reported in one line."""


def _first_values(overrides: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """The overrides with every sweep replaced by its first value (interval and glob sweeps dropped),
    and, for each sweep over a config group of ``conf/``, the same list with each of its other values."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    single: list[str] = []
    alternatives: list[tuple[int, list[str]]] = []
    for text in overrides:
        try:
            (override,) = parser.parse_overrides([text])
        except OverrideParseException as err:
            reason = str(err).splitlines()[0]
            raise CommandLineError(
                f"cannot parse the override {text!r}: {reason} (syntax: "
                "https://hydra.cc/docs/advanced/override_grammar/basic)"
            ) from None
        if not override.is_sweep_override():
            single.append(text)
        elif override.is_discrete_sweep() and not override.value_type.name.startswith("GLOB"):
            values = list(override.sweep_string_iterator())
            if values:
                key = override.get_key_element()
                if (CONF / override.key_or_group).is_dir():  # a config group: check every option
                    alternatives.append((len(single), [f"{key}={v}" for v in values[1:]]))
                single.append(f"{key}={values[0]}")
    variants = []
    for position, others in alternatives:
        for other in others:
            variant = list(single)
            variant[position] = other
            variants.append(variant)
    return single, variants


def _closest_key(cfg: DictConfig, dotted: str) -> str | None:
    parent, _, leaf = dotted.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig):
        return None
    match = difflib.get_close_matches(leaf, [str(k) for k in node], n=1, cutoff=0.6)
    return f"{parent}.{match[0]}" if match and parent else (match[0] if match else None)


def _compose(overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import histo_lightning.utils.resolvers  # noqa: F401  (${hl.root:})

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(config_name=CONFIG_NAME, overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


def _missing_key_message(text: str, overrides: list[str]) -> str | None:
    """``key: no such key ...`` for Hydra's "Could not override 'key'" message, or None."""
    marker = "Could not override '"
    if marker not in text:
        return None
    key = text.split(marker, 1)[1].split("'", 1)[0]
    rest = [o for o in overrides if not o.lstrip("+~").startswith(f"{key}=")]
    try:
        suggestion = _closest_key(_compose(rest), key)
    except Exception:
        suggestion = None
    hint = f" (did you mean {suggestion}?)" if suggestion else ""
    value = next((o.split("=", 1)[1] for o in overrides if o.startswith(f"{key}=")), "...")
    return f"{key}: no such key in the config{hint}; to add a new key use +{key}={value}"


def explain(overrides: Sequence[str], multirun: bool = False) -> str | None:
    """The one-line error of composing the config with ``overrides``, or None if it composes.

    Only the mistakes listed in the module docstring are explained; other failures return None
    (Hydra reports them itself). ``multirun``: the command has ``-m`` (the sweep folder is checked).
    """
    message = moved(overrides)
    if message is not None:
        return message
    try:
        single, variants = _first_values(overrides)
    except CommandLineError as err:
        return str(err)
    for candidate in (single, *variants):
        message = _explain_composition(candidate, multirun)
        if message is not None:
            return message
    return None


def _unwritable(path: Path) -> str | None:
    """Why the folder ``path`` cannot be created or written, or None when it can."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        return f"{probe} is a file, not a folder"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".histo-write-check-", dir=probe))
    except OSError as err:
        return f"{probe} is not writable ({err.strerror or err})"
    return None


#: folders every job writes, checked before Hydra creates the run folder (the run folder: hydra.run.dir,
#: or hydra.sweep.dir in a sweep)
WRITTEN_FOLDERS = ("paths.cache_dir", "paths.split_dir")


def _unwritable_folder(cfg: DictConfig, multirun: bool) -> str | None:
    """``<key>=<path> cannot be written: <why>`` for the first folder of the job that cannot be."""
    keys = ["hydra.sweep.dir" if multirun else "hydra.run.dir", *WRITTEN_FOLDERS]
    for key in keys:
        try:
            value = OmegaConf.select(cfg, key, throw_on_resolution_failure=True)
        except Exception:
            continue  # resolved later by Hydra or the job (e.g. ${hydra:...}); not ours to judge here
        if not value:
            continue
        path = Path(str(value)).expanduser().absolute()
        problem = _unwritable(path)
        if problem is not None:
            return f"{key}={value} cannot be written: {problem}; expected a folder this user can create"
    return None


def _explain_composition(single: list[str], multirun: bool = False) -> str | None:
    from hydra.errors import ConfigCompositionException, MissingConfigException

    try:
        cfg = _compose(single)
    except MissingConfigException as err:
        missing = str(err.missing_cfg_file or "")
        group, _, option = missing.rpartition("/")
        if err.options and group:
            return (
                f"{group}={option}: no such option; expected one of {', '.join(err.options)} "
                f"(conf/{group}/*.yaml)"
            )
        return " ".join(str(err).split())
    except ConfigCompositionException as err:
        text = " ".join(str(err).split())
        return _missing_key_message(str(err), single) or text
    except Exception:
        return None
    from histo_lightning.errors import HistoError
    from histo_lightning.utils.preflight import run_preflight

    try:
        run_preflight(cfg)
    except HistoError as err:
        return str(err)
    except Exception:
        pass  # not a pre-flight verdict: the job reports it
    return _unwritable_folder(cfg, multirun)


def experiment_line(path: Path, width: int = 96) -> str:
    """The first comment line of an experiment file (``…`` when the comment goes on)."""
    comments = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        if "@package" not in line:
            comments.append(line.lstrip("#").strip())
    if not comments:
        return ""
    first = comments[0]
    more = len(comments) > 1 and not first.endswith(".")
    if len(first) > width:
        first, more = first[:width].rsplit(" ", 1)[0], True
    return first + (" …" if more else "")


#: the order ``--help`` lists the config groups in (others follow alphabetically)
_GROUP_ORDER = (
    "dataset",
    "model",
    "method",
    "protocol",
    "loss",
    "embedding_loss",
    "encoder",
    "pipeline",
)


def config_groups(conf: Path = CONF) -> list[str]:
    """The config groups a user chooses options of (``conf/<group>/``; not experiment or hydra)."""
    names = {p.name for p in conf.iterdir() if p.is_dir()} - {"experiment", "hydra"}
    first = [g for g in _GROUP_ORDER if g in names]
    return first + sorted(names - set(first))


def usage(conf_dirs: Sequence[Path] = (CONF,)) -> str:
    """What ``python run.py --help`` prints (see the module docstring); ``conf_dirs``: the config folders
    searched for ``experiment/<name>.yaml`` (a test adds its own)."""
    from histo_lightning.methods import method_packages

    files: dict[str, Path] = {}
    for conf in reversed(conf_dirs):
        files.update({p.stem: p for p in sorted((Path(conf) / "experiment").glob("*.yaml"))})

    def listing(names: Sequence[str]) -> list[str]:
        width = max((len(n) for n in names), default=0)
        return [f"  {n:<{width}}  {experiment_line(files[n])}" for n in names]

    lines = [
        "usage: python run.py [experiment=NAME] [fold=K] [group=option ...] [key=value ...]",
        "       python run.py -m experiment=NAME [key=a,b ...]   (a sweep; alone: the paper's protocol)",
        "       python run.py experiment=NAME --cfg job          (print the composed config)",
        "",
        "Experiments (conf/experiment/), by paper:",
    ]
    listed: set[str] = set()
    for package in method_packages():
        names = [n for n in package.EXPERIMENTS if n in files]
        folder = f"histo_lightning/methods/{package.__name__.rsplit('.', 1)[-1]}/"
        lines += [
            "",
            f"{package.SUMMARY}  ({folder})",
            f"  paper: {package.PAPER}",
            *listing(names),
        ]
        listed.update(names)
    others = sorted(set(files) - listed)
    if others:
        lines += ["", "Other experiments:", *listing(others)]
    sweeps: dict[str, Path] = {}
    for conf in reversed(conf_dirs):
        sweeps.update({p.stem: p for p in sorted((Path(conf) / "hparams_search").glob("*.yaml"))})
    if sweeps:
        files.update(sweeps)
        lines += [
            "",
            "Sweeps and searches (conf/hparams_search/; python run.py -m experiment=... "
            "hparams_search=NAME):",
            *listing(sorted(sweeps)),
        ]
    lines += [
        "",
        *textwrap.wrap(
            "Config groups (conf/<group>/): "
            + ", ".join(config_groups(conf_dirs[0]))
            + " (debug=smoke: any experiment end to end in minutes; protocol: a method's settings per "
            "dataset, chosen by the dataset's name).",
            width=104,
            subsequent_indent="  ",
        ),
        f"Documentation: {README} (docs/architecture.md: where each method lives).",
        "Hydra's own help: python run.py --hydra-help",
    ]
    return "\n".join(lines)


def check_command_line(argv: Sequence[str]) -> None:
    """Exit with one ``error:`` line (code 2) for the command-line mistakes of the module docstring."""
    if any(arg in ("--help", "-h") for arg in argv):
        print(usage(), flush=True)
        raise SystemExit(0)
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        return
    if any(arg.startswith("-") and arg not in _PASS_FLAGS for arg in argv):
        return  # other Hydra flags: --cfg, --info, -cn, ... are Hydra's business
    multirun = any(arg in ("-m", "--multirun") for arg in argv)
    message = explain([arg for arg in argv if arg not in _PASS_FLAGS], multirun)
    if message is not None:
        print(f"error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(2)


__all__ = ["check_command_line", "explain", "usage"]
