"""Config keys with a fixed set of values: declared where they are consumed, checked before anything runs.

A function or class that a config node names (by ``_target_``, or a stage's ``fn`` with its ``kwargs``)
declares which of its arguments take one of a fixed set of values::

    @declare_choices(method=OneOf(METHODS, ignore_case=True), allocation=ALLOCATIONS)
    def generate_bags(ctx, method="FMB", allocation="proportional", ...): ...

:func:`check_config_choices` walks the composed config and checks every declared argument of every node
that names such a target, so a misspelt method fails in one ``error:`` line before any data is read or
any stage runs (the stage runner calls it first, in ``PipelineRunner.check``), not after training. The
line names the key the user sets: for ``kwargs: {method: ${method.hnm.method}}`` it is ``method.hnm.method``. A name
may be dotted (``encoder.name``: a key of a dict argument). An argument the node does not set keeps the
target's default and is not checked. Stages switched off (``enabled: false``) are not checked.

A spec is a tuple of values (:class:`OneOf`), a :class:`OneOf` (with ``ignore_case``), or an
:class:`Accepts` (a predicate and what it expects, e.g. "a number of bags ≥ 1 or 'false_positives'").
The consumer may keep its own check for direct Python calls; the declaration is what the config is
checked against. :func:`check_stage_references` checks the other kind of fixed choice, a stage's ``from``
and ``init_from`` (an earlier stage of the pipeline, e.g. ``method.hnm.init_from``); :func:`check_config` runs both.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from histo_lightning.errors import ConfigError

CHOICES_ATTRIBUTE = "__config_choices__"
_PACKAGE = "histo_lightning."


@dataclass(frozen=True)
class OneOf:
    """One of ``values`` (strings compared case-insensitively with ``ignore_case``)."""

    values: tuple[Any, ...]
    ignore_case: bool = False

    def problem(self, value: Any) -> str | None:
        candidates = [str(v).lower() for v in self.values] if self.ignore_case else self.values
        probe = str(value).lower() if self.ignore_case and isinstance(value, str) else value
        if probe in candidates:
            return None
        return f"expected one of {', '.join(str(v) for v in self.values)}"


@dataclass(frozen=True)
class Accepts:
    """A value for which ``test`` is true; ``expected`` says what that is."""

    expected: str
    test: Callable[[Any], bool]

    def problem(self, value: Any) -> str | None:
        try:
            ok = bool(self.test(value))
        except (TypeError, ValueError):
            ok = False
        return None if ok else f"expected {self.expected}"


Spec = OneOf | Accepts


def is_number(value: Any) -> bool:
    """A real number (not a bool, not NaN)."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and value == value


def is_probability(value: Any) -> bool:
    """A number in [0, 1]."""
    return is_number(value) and 0 <= value <= 1


def is_count(value: Any) -> bool:
    """An integer of at least 1."""
    return not isinstance(value, bool) and isinstance(value, int) and value >= 1


#: the numeric specs the stages' consumers declare (a threshold, a count)
NUMBER = Accepts("a number", is_number)
PROBABILITY = Accepts("a probability in [0, 1]", is_probability)
COUNT = Accepts("an integer of at least 1", is_count)
BOOLEAN = OneOf((True, False))


def _spec(value: Spec | Sequence[Any]) -> Spec:
    return value if isinstance(value, (OneOf, Accepts)) else OneOf(tuple(value))


def declare_choices(**specs: Spec | Sequence[Any]) -> Callable[[Any], Any]:
    """Declare the fixed-choice arguments of a function or class (see the module docstring).

    A class inherits its bases' declarations (a subclass may add or replace some).
    """

    def mark(target: Any) -> Any:
        inherited = dict(getattr(target, CHOICES_ATTRIBUTE, {}))
        setattr(target, CHOICES_ATTRIBUTE, {**inherited, **{k: _spec(v) for k, v in specs.items()}})
        return target

    return mark


def declared_choices(target: Any) -> dict[str, Spec]:
    """The declared fixed-choice arguments of a function or class (empty when none)."""
    return dict(getattr(target, CHOICES_ATTRIBUTE, {}))


def _import(path: str) -> Any:
    """The object at ``package.module.name`` (None when it cannot be imported: other checks say why)."""
    module_name, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        return None


def _interpolation_source(node: DictConfig, key: str) -> str | None:
    """``method.hnm.method`` when ``node[key]`` is ``${method.hnm.method}`` (followed through chains), else None."""
    source = None
    for _ in range(16):
        child = node._get_node(key)
        raw = child._value() if child is not None else None
        if not (isinstance(raw, str) and OmegaConf.is_interpolation(node, key)):
            return source
        text = raw.strip()
        if not (text.startswith("${") and text.endswith("}")) or text.count("${") != 1:
            return source
        source = text[2:-1]
        if ":" in source:  # a resolver, not a key
            return None
        parent, _, leaf = source.rpartition(".")
        holder = OmegaConf.select(node._get_root(), parent) if parent else node._get_root()
        if not isinstance(holder, DictConfig) or leaf not in holder:
            return source
        node, key = holder, leaf
    return source


def _full_key(node: DictConfig, key: str) -> str:
    full = node._get_full_key(key)
    return str(full) if full else key


def user_key(node: DictConfig, key: str) -> str:
    """The key a user sets for ``node[key]``: the source of its interpolation, else its own full key."""
    return _interpolation_source(node, key) or _full_key(node, key)


def _argument(node: DictConfig, dotted: str) -> tuple[bool, Any, str]:
    """``(present, value, the key the user sets)`` of argument ``dotted`` of ``node``."""
    *parents, leaf = dotted.split(".")
    holder: Any = node
    for part in parents:
        if not isinstance(holder, DictConfig) or part not in holder:
            return False, None, dotted
        try:
            holder = holder[part]
        except Exception:
            return False, None, dotted
    if not isinstance(holder, DictConfig) or leaf not in holder:
        return False, None, dotted
    try:
        value = holder[leaf]
    except Exception:  # an interpolation that does not resolve here: other checks report it
        return False, None, dotted
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    return True, value, user_key(holder, leaf)


def _enabled(node: DictConfig) -> bool:
    try:
        value = node.get("enabled", True)
    except Exception:
        return True
    if isinstance(value, str):
        return value.strip().lower() not in ("false", "0", "no")
    return bool(value) if value is not None else True


def _nodes(cfg: DictConfig) -> Iterator[DictConfig]:
    """Every dict node of ``cfg`` once (interpolated nodes at their own place), ``hydra`` left out,
    the stages switched off left out."""
    seen: set[int] = set()
    stack: list[Any] = [cfg]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, DictConfig):
            yield node
            keys = [k for k in node if not (node is cfg and k == "hydra")]
            children = []
            for key in keys:
                try:
                    child = node[key]
                except Exception:
                    continue
                if isinstance(child, DictConfig) and _is_stage(node, key) and not _enabled(child):
                    continue
                if isinstance(child, (DictConfig, ListConfig)):
                    children.append(child)
            stack.extend(reversed(children))  # depth first, in the config's order
        elif isinstance(node, ListConfig):
            for i in reversed(range(len(node))):
                try:
                    child = node[i]
                except Exception:
                    continue
                if isinstance(child, (DictConfig, ListConfig)):
                    stack.append(child)


def _is_stage(parent: DictConfig, key: Any) -> bool:
    """Whether ``parent[key]`` is a stage of ``pipeline.stages``."""
    return (
        str(parent._get_full_key(key) or "").startswith("pipeline.stages.")
        and str(parent._get_full_key(key)).count(".") == 2
    )


def _target_and_arguments(node: DictConfig) -> tuple[Any, DictConfig] | None:
    """The declared target a node names and the node holding its arguments, or None."""
    for key in ("_target_", "fn"):
        if key not in node:
            continue
        try:
            name = node[key]
        except Exception:
            return None
        if not isinstance(name, str) or not name.startswith(_PACKAGE):
            return None
        target = _import(name)
        if target is None or not declared_choices(target):
            return None
        arguments = node.get("kwargs") if key == "fn" else node
        return target, arguments if isinstance(arguments, DictConfig) else node
    return None


def check_arguments(target: Any, arguments: Mapping[str, Any] | DictConfig) -> None:
    """Raise a :class:`ConfigError` for the first declared argument of ``target`` whose value is not
    allowed, naming the key the user sets (``method.hnm.method='XB': expected one of SB, MB, FMB``)."""
    node = arguments if isinstance(arguments, DictConfig) else OmegaConf.create(dict(arguments))
    for name, spec in declared_choices(target).items():
        present, value, key = _argument(node, name)
        if not present:
            continue
        problem = spec.problem(value)
        if problem is not None:
            raise ConfigError(f"{key}={value!r}: {problem}")


def check_config_choices(cfg: DictConfig) -> None:
    """Check every declared choice in the composed config (see the module docstring)."""
    for node in _nodes(cfg):
        found = _target_and_arguments(node)
        if found is not None:
            check_arguments(*found)


#: stage keys that name another stage, and whether the stage named must be a fit (it gives weights)
STAGE_REFERENCES = {"from": False, "init_from": True}


def check_stage_references(pipeline: DictConfig, order: Sequence[str]) -> None:
    """Every ``from``/``init_from`` of an enabled stage names a stage before it (``init_from``: an
    enabled fit stage), so that ``method.hnm.init_from=stage1`` fails before stage 1 trains, not after.

    ``from`` may name a disabled stage: a test stage then evaluates ``ckpt_path`` (``train=false``).
    """
    stages = pipeline.stages
    for position, name in enumerate(order):
        node = stages[name]
        if not isinstance(node, DictConfig) or not _enabled(node):
            continue
        earlier = list(order[:position])
        for key, needs_fit in STAGE_REFERENCES.items():
            if key not in node or node.get(key) in (None, ""):
                continue
            ref = node.get(key)
            candidates = [
                n
                for n in earlier
                if not needs_fit or (stages[n].get("kind") == "fit" and _enabled(stages[n]))
            ]
            if ref not in candidates:
                what = "an earlier enabled fit stage" if needs_fit else "an earlier stage"
                raise ConfigError(
                    f"{user_key(node, key)}={ref!r}: expected {what} of this pipeline "
                    f"(stage {name!r}), one of {candidates or 'none'}"
                )


#: top-level keys of every job and what they hold
JOB_KEYS: dict[str, Spec] = {
    "fold": Accepts("a positive integer (the test fold, 1-based)", is_count),
    "repeat": Accepts(
        "a positive integer (the repetition of the protocol, 1 = the first)", is_count
    ),
    "seed": Accepts(
        "an integer (or null: no seeding)",
        lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)),
    ),
}


def check_job_keys(cfg: DictConfig) -> None:
    """``fold`` and ``repeat`` (:data:`JOB_KEYS`) hold what they must (before anything resolves them,
    e.g. the MIL experiments' seed from ``repeat``)."""
    for key, spec in JOB_KEYS.items():
        if key not in cfg:
            continue
        try:
            value = cfg[key]
        except Exception:
            continue
        problem = spec.problem(value)
        if problem is not None:
            raise ConfigError(f"{key}={value!r}: {problem}")


def check_references_resolve(cfg: DictConfig) -> None:
    """Every interpolation names a key that exists: ``experiment=mil_hnm dataset=bach_synthetic`` leaves
    ``split.n_folds: ${method.protocol.n_folds}`` pointing at nothing (config groups that do not fit
    together). Other resolution failures (``${hydra:...}`` outside a job) are not this check's business."""
    from omegaconf.errors import InterpolationKeyError

    for node in _nodes(cfg):
        for key in node:
            if node is cfg and key == "hydra":
                continue
            try:
                node[key]
            except InterpolationKeyError as err:
                missing = str(err).split("'")[1] if "'" in str(err) else str(err)
                raise ConfigError(
                    f"{_full_key(node, key)}: it refers to {missing}, which is not in the composed "
                    f"config{_group_hint(missing)}; expected config groups that fit together (e.g. a "
                    "dataset this experiment supports)"
                ) from None
            except Exception:
                continue


def _group_hint(missing: str) -> str:
    """`` (dataset=bach_synthetic has no such key)`` when the missing key lies in a chosen group."""
    from hydra.core.hydra_config import HydraConfig

    group = missing.split(".", 1)[0]
    try:
        choice = HydraConfig.get().runtime.choices.get(group) if HydraConfig.initialized() else None
    except Exception:
        choice = None
    return f" ({group}={choice} has no such key)" if choice else ""


def check_accelerator(cfg: DictConfig) -> None:
    """``trainer.accelerator=gpu`` (``trainer=gpu``) needs a GPU this process can see."""
    accelerator = OmegaConf.select(cfg, "trainer.accelerator", default=None)
    if str(accelerator).lower() not in ("gpu", "cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator}: no GPU is visible to this process "
            "(torch.cuda.is_available() is false); expected trainer=cpu or trainer=default here"
        )


def check_config(cfg: DictConfig) -> None:
    """The checks of this module on a composed job config (the stage runner calls it before anything
    runs): ``fold``, ``repeat`` and ``seed``, interpolations that point at nothing, the declared
    choices, the stages' references to earlier stages and a GPU trainer without a GPU."""
    check_job_keys(cfg)
    check_references_resolve(cfg)
    check_config_choices(cfg)
    check_accelerator(cfg)
    pipeline = cfg.get("pipeline")
    if isinstance(pipeline, DictConfig) and isinstance(pipeline.get("stages"), DictConfig):
        order = list(pipeline.get("order") or pipeline.stages.keys())
        check_stage_references(pipeline, [n for n in order if n in pipeline.stages])


__all__ = [
    "BOOLEAN",
    "COUNT",
    "NUMBER",
    "PROBABILITY",
    "Accepts",
    "OneOf",
    "check_accelerator",
    "check_arguments",
    "check_config",
    "check_config_choices",
    "check_job_keys",
    "check_references_resolve",
    "check_stage_references",
    "declare_choices",
    "declared_choices",
    "is_count",
    "is_number",
    "is_probability",
    "user_key",
]
