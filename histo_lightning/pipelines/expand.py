"""``foreach``: one stage declaration expanded into several named stages before anything runs.

The stage runner has no loop construct; a stage that must run once per item (an inner fold, a seed) is
declared once with ``foreach`` and expanded here into one stage per item, named ``<stage>_<item>``, in
its place in the stage order::

    inner_fit:
      kind: fit
      foreach: ${hl.range:3}          # "1,2,3", a list [a, b], or an integer n (1…n); empty: no stage
      module: ${model}
      data: [{fn: package.module.hook, part: fit, fold: "{item}"}]
    inner_score:
      kind: predict
      foreach: ${hl.range:3}
      from: inner_fit_{item}

becomes the stages ``inner_fit_1, inner_fit_2, inner_fit_3, inner_score_1, …``. In each copy the key
``item`` holds the item, and every string of the declaration has ``{item}`` replaced by it (a string
that is exactly ``"{item}"`` becomes the item itself, an integer stays an integer); interpolations
(``${method.hnm.inner_folds}``) stay interpolations into the run's config. Each expanded stage
is an ordinary stage: seeded from its own name, fingerprinted, skipped or redone on its own. A
``pipeline.order`` that names the declaration gets its expansion in that place.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from histo_lightning.errors import ConfigError

FOREACH = "foreach"
ITEM = "{item}"


def foreach_items(name: str, value: Any) -> list[Any]:
    """The items of ``pipeline.stages.<name>.foreach``: a list, a comma-separated string, or an integer
    n (1…n); None or empty gives none."""
    if value is None:
        return []
    if isinstance(value, (list, tuple, ListConfig)):
        items = list(value)
    elif isinstance(value, bool):
        items = None
    elif isinstance(value, int):
        items = list(range(1, value + 1)) if value >= 0 else None
    elif isinstance(value, str):
        items = [_scalar(v.strip()) for v in value.split(",") if v.strip()]
    else:
        items = None
    if items is None:
        raise ConfigError(
            f"pipeline.stages.{name}.foreach={value!r}: expected a list, a comma-separated string "
            "or a non-negative integer"
        )
    if len({str(i) for i in items}) != len(items):
        raise ConfigError(f"pipeline.stages.{name}.foreach={value!r}: items must be distinct")
    for item in items:
        if not isinstance(item, (int, str)) or isinstance(item, bool):
            raise ConfigError(
                f"pipeline.stages.{name}.foreach: item {item!r} is not an integer or a name"
            )
    return items


def _scalar(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        return text


def _substitute(node: Any, item: Any) -> Any:
    if isinstance(node, str):
        if node == ITEM:
            return item
        return node.replace(ITEM, str(item))
    if isinstance(node, Mapping):
        return {k: _substitute(v, item) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, item) for v in node]
    return node


def expand_pipeline(cfg: DictConfig) -> DictConfig:
    """Replace every ``foreach`` stage of ``cfg.pipeline`` by its expansion (see the module docstring),
    in place, so the stages that stay keep their interpolations into the run's config; returns
    ``cfg.pipeline``. A pipeline without ``foreach`` is left as it is."""
    pipeline = cfg.pipeline
    stages = pipeline.get("stages") or {}
    if not any(isinstance(n, DictConfig) and FOREACH in n for n in stages.values()):
        return pipeline
    expanded: dict[str, Any] = {}
    renamed: dict[str, list[str]] = {}
    for name, node in stages.items():
        if not (isinstance(node, DictConfig) and FOREACH in node):
            expanded[name] = node
            continue
        try:
            items = foreach_items(name, node[FOREACH])
            # interpolations stay (resolved in the run's config, and named by the checks as the user
            # wrote them, e.g. method.hnm.inner_folds)
            plain = OmegaConf.to_container(node, resolve=False)
        except OmegaConfBaseException as err:
            cause = err.__cause__ or err
            raise ConfigError(f"pipeline.stages.{name}: {' '.join(str(cause).split())}") from None
        plain.pop(FOREACH)
        renamed[name] = []
        for item in items:
            copy_name = f"{name}_{item}"
            if copy_name in stages:
                raise ConfigError(
                    f"pipeline.stages.{name}.foreach: the expanded stage {copy_name!r} is also "
                    "declared on its own"
                )
            expanded[copy_name] = {**_substitute(plain, item), "item": item}
            renamed[name].append(copy_name)
    order = None
    if pipeline.get("order"):
        order = [n for name in pipeline.order for n in renamed.get(name, [name])]
    with open_dict(cfg):
        cfg.pipeline.stages = expanded
        if order is not None:
            cfg.pipeline.order = order
    return cfg.pipeline


__all__ = ["FOREACH", "expand_pipeline", "foreach_items"]
