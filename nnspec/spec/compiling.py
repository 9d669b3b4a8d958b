"""Which spec options ``train.compile: true`` cannot take, found at validation with their position.

The compiled step (:mod:`nnspec.train.compiled`) is one traced graph from
forward to optimizer update. Every optimizer, schedule, loss, penalty, clip,
dropout, augmentation and input noise works in it; what cannot is listed
here, each with why, so that ``nnspec validate`` refuses it at the line that
asks for it rather than the run failing minutes into compilation. This module
imports no torch: validating a spec stays cheap.
"""

from __future__ import annotations

from nnspec.spec.model import Spec

#: (key path of the option, why the compiled step cannot take it), checked in this order.
_REFUSED = (
    (("regularization", "adversarial"),
     ("cannot be compiled (train.compile: true): FGSM takes a gradient with respect to the inputs inside the "
      "step, a second differentiation the compiled step does not trace; set train.compile: false")),
)


def compile_problems(spec: Spec) -> list[tuple[tuple[str | int, ...], str]]:
    """(key path, message) for every option the compiled step refuses; empty when compilation is off."""
    if not spec.train.compile:
        return []
    problems = []
    for path, why in _REFUSED:
        value = spec
        for key in path:
            value = getattr(value, key, None)
        if value is not None:
            problems.append((path, why))
    return problems
