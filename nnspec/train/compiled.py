"""``train.compile: true``: the whole optimizer step as one ``torch.compile``'d function.

Why compile the step and not the model: at batch 1 a 784-200-10 step is under
a megaflop, and an eager step spends most of its time dispatching — a dozen
operator calls forward, their autograd nodes backward, the optimizer's loop
over parameters. Compiling only the forward leaves the backward and the update
eager. So the step is written functionally and compiled as one graph
(``fullgraph=True``):

* forward, loss and penalties run through ``torch.func.functional_call`` on the
  model's own parameter tensors, differentiated by ``torch.func.grad_and_value``
  (AOTAutograd traces the backward into the same graph);
* clipping and the optimizer update are written here, over the parameters *in
  place*, with the optimizer's state tensors *of the torch optimizer object*
  (``exp_avg``, ``momentum_buffer``, ``step``…, created with torch's layout when
  absent). The checkpoint therefore does not know whether the step was
  compiled: a run may be resumed with compilation switched on or off.
* the learning rate lives in a 0-d tensor per parameter group, refilled from
  the group (where the schedule writes it) only when it changed, so a
  schedule never forces a recompile.

What stays eager, and why: augmentation and the input noise draw from their
own ``torch.Generator`` (Dynamo does not trace explicit generators), so they
are drawn before the compiled call with exactly the eager step's calls, and
the noise is *added* inside the graph. Dropout uses the global generator; on
the CPU Inductor is asked for ``fallback_random`` so its masks are torch's own
(the compiled step matches the eager one with the same generator state, and a
resumed run is bit-identical).

On CUDA the step is compiled as ``mode="reduce-overhead"`` compiles (a CUDA graph,
replayed; Inductor copies each step's batch into static input buffers); the
optimizer state and learning-rate tensors are marked static addresses, as
torch's own compiled optimizers do, and the outputs are cloned out of the
graph's memory pool before the next replay can overwrite them.

Before each call Dynamo checks the graph's guards; the step keeps only those
that can fail (tensor layouts, global state, the modules' ``training`` flags —
:func:`step_guards`), which at batch 1 is the difference between about 65%
and about 90% of the hand-derived floor's speed.

The options the compiled step cannot take are refused at validation
(:mod:`nnspec.spec.compiling`); multi-process training is refused here.
"""

from __future__ import annotations

import math
import time
import types
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from nnspec.spec import training as T
from nnspec.spec.model import Spec
from nnspec.train.optim import DECAY_KEY, split_parameters

#: ``update(param, grad, state, lr)``: one optimizer's in-place update of one parameter.
Update = Callable[[Tensor, Tensor, dict[str, Tensor], Tensor], None]

def _sgd(kind: T.SGD) -> tuple[Update, tuple[str, ...]]:
    momentum, nesterov = kind.momentum, kind.nesterov

    def update(p: Tensor, g: Tensor, state: dict[str, Tensor], lr: Tensor) -> None:
        if momentum:
            buf = state["momentum_buffer"]  # starts at zero: m * 0 + g is torch's first-step clone of g
            buf.mul_(momentum).add_(g)
            g = g.add(buf, alpha=momentum) if nesterov else buf
        p.sub_(lr * g)

    return update, ("momentum_buffer",) if momentum else ()


def _adam(kind: T.Adam) -> tuple[Update, tuple[str, ...]]:
    beta1, beta2 = kind.betas
    eps = kind.eps

    def update(p: Tensor, g: Tensor, state: dict[str, Tensor], lr: Tensor) -> None:
        step, exp_avg, exp_avg_sq = state["step"], state["exp_avg"], state["exp_avg_sq"]
        step.add_(1)
        exp_avg.lerp_(g, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        bias1 = 1 - torch.pow(beta1, step)
        bias2_sqrt = torch.sqrt(1 - torch.pow(beta2, step))
        denom = (exp_avg_sq.sqrt() / bias2_sqrt).add_(eps)
        p.sub_((lr / bias1) * exp_avg / denom)

    return update, ("step", "exp_avg", "exp_avg_sq")


def _adagrad(kind: T.AdaGrad) -> tuple[Update, tuple[str, ...]]:
    eps = kind.eps

    def update(p: Tensor, g: Tensor, state: dict[str, Tensor], lr: Tensor) -> None:
        state["step"].add_(1)
        total = state["sum"]
        total.addcmul_(g, g, value=1)
        p.sub_(lr * g / total.sqrt().add_(eps))

    return update, ("step", "sum")


def _adadelta(kind: T.AdaDelta) -> tuple[Update, tuple[str, ...]]:
    rho, eps = kind.rho, kind.eps

    def update(p: Tensor, g: Tensor, state: dict[str, Tensor], lr: Tensor) -> None:
        state["step"].add_(1)
        square_avg, acc_delta = state["square_avg"], state["acc_delta"]
        square_avg.mul_(rho).addcmul_(g, g, value=1 - rho)
        std = square_avg.add(eps).sqrt_()
        delta = acc_delta.add(eps).sqrt_().div_(std).mul_(g)
        acc_delta.mul_(rho).addcmul_(delta, delta, value=1 - rho)
        p.sub_(lr * delta)

    return update, ("step", "square_avg", "acc_delta")


def _rmsprop(kind: T.RMSProp) -> tuple[Update, tuple[str, ...]]:
    alpha, eps, momentum = kind.alpha, kind.eps, kind.momentum

    def update(p: Tensor, g: Tensor, state: dict[str, Tensor], lr: Tensor) -> None:
        state["step"].add_(1)
        square_avg = state["square_avg"]
        square_avg.mul_(alpha).addcmul_(g, g, value=1 - alpha)
        avg = square_avg.sqrt().add_(eps)
        if momentum:
            buf = state["momentum_buffer"]
            buf.mul_(momentum).addcdiv_(g, avg)
            p.sub_(lr * buf)
        else:
            p.sub_(lr * g / avg)

    return update, ("step", "square_avg", "momentum_buffer") if momentum else ("step", "square_avg")


def optimizer_update(kind: T.Kind) -> tuple[Update, tuple[str, ...]]:
    """The in-place update for one spec optimizer, and the torch state keys it reads and writes."""
    if isinstance(kind, T.SGD):
        return _sgd(kind)
    if isinstance(kind, T.Adam):  # adam and adamw: the decoupled decay is applied before, as AdamW does
        return _adam(kind)
    if isinstance(kind, T.AdaGrad):
        return _adagrad(kind)
    if isinstance(kind, T.AdaDelta):
        return _adadelta(kind)
    if isinstance(kind, T.RMSProp):
        return _rmsprop(kind)
    raise ValueError(f"no compiled update for optimizer {kind.type!r}")  # unreachable: the schema lists the kinds


def _state_tensors(optimizer: torch.optim.Optimizer, param: Tensor, keys: Sequence[str]) -> dict[str, Tensor]:
    """The optimizer's state of ``param`` with every key present, laid out as torch's own optimizer keeps it.

    A ``step`` is a float32 0-d tensor on the parameter's device (torch's
    fused and capturable layout; torch's for-loop path reads it the same way),
    the rest zeros like the parameter. Existing tensors (a resumed run, or one
    the torch optimizer created) are kept and updated in place.
    """
    state = optimizer.state[param]
    for key in keys:
        if key not in state or state[key] is None:
            state[key] = torch.zeros((), dtype=torch.float32, device=param.device) if key == "step" else torch.zeros_like(param)
        elif key == "step" and state[key].device != param.device:
            state[key] = state[key].to(param.device)
    return {key: state[key] for key in keys}


def _decay_rate(optimizer: torch.optim.Optimizer, group: dict[str, Any]) -> float:
    """The group's decoupled decay rate, where :func:`nnspec.train.optim.build_optimizer` put it.

    AdamW keeps it as its own ``weight_decay``; the others under ``DECAY_KEY``
    (which torch's AdamW also has, as a flag, so AdamW is asked first).
    """
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return float(group["weight_decay"])
    return float(group.get(DECAY_KEY, 0.0))


def _clip(grads: list[Tensor], max_norm: float | None, max_value: float | None) -> list[Tensor]:
    """``clip_grad_norm_`` then ``clip_grad_value_``, as :func:`nnspec.train.regularize.clip_gradients` orders them."""
    if max_norm is not None:
        total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        grads = [g * coef for g in grads]
    if max_value is not None:
        grads = [g.clamp(-max_value, max_value) for g in grads]
    return grads


#: Whether this torch lets a compilation choose its guards (``options={"guard_filter_fn": …}``, torch 2.8+).
GUARD_FILTER_SUPPORTED = hasattr(torch.compiler, "keep_tensor_guards_unsafe")

#: The guards the compiled step keeps: every tensor's dtype, device, shape, strides and
#: requires_grad (the batch's shape tells the epoch's last, smaller batch from the others), and the
#: global state (grad mode, autocast, deterministic algorithms…).
KEPT_GUARD_TYPES = frozenset({"TENSOR_MATCH", "GLOBAL_STATE"})


def step_guards(entries: Sequence[Any]) -> list[bool]:
    """Dynamo's ``guard_filter_fn`` for the step: keep the guards that can fail, drop the rest.

    Why: Dynamo checks every guard of a compiled graph before each call, and a step traced through
    ``functional_call`` collects hundreds — the model's modules, their hook dicts, the identity
    of every function and module it passed through, every closure constant. At batch 1 checking
    them cost about 100 µs of a 300 µs step (the profiler's "TorchDynamo Cache Lookup"); with this
    filter, about 8 µs. What is dropped cannot change under a step: its code object is its own
    (:func:`_own_code`), its closures are fixed when it is built, and nnspec adds no hooks. What
    can change is kept: the tensors' layouts (so a new batch shape compiles its own graph), the
    global state, and each module's ``training`` flag (a step called in eval mode must run
    dropout and BatchNorm as eval does, not replay the training graph).
    """
    return [entry.guard_type in KEPT_GUARD_TYPES or entry.name.endswith(".training") for entry in entries]


def _own_code(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` with a private copy of its code object.

    Dynamo keeps its compiled graphs and their guards on the code object, so
    every CompiledStep built from the same source line would share one cache:
    each new model (a seed, an ensemble member, a test) would count as a
    recompile of it, hit ``recompile_limit`` after eight, and keep the older
    models alive through the guards. A private code object gives each step its
    own cache, freed with it. Inductor's on-disk caches are keyed by the graph,
    not the code object, so a second model of the same shape still hits them.
    """
    return types.FunctionType(function.__code__.replace(), function.__globals__, function.__name__,
                              function.__defaults__, function.__closure__)  # fmt: skip


class CompiledStep:
    """``step(x, y, weight) -> (data loss, outputs)`` with everything from forward to update compiled.

    ``backend`` is ``torch.compile``'s (``"inductor"`` for real runs;
    ``"aot_eager"`` traces the same graph without generating code, which the
    tests use to check equivalence cheaply). ``on_compile(shape, seconds)``
    is told each time a new batch shape was compiled, with the wall time of
    that first call.
    """

    def __init__(self, spec: Spec, model: nn.Module, compute_loss: Callable[[Tensor, Tensor], Tensor],
                 optimizer: torch.optim.Optimizer, *, noise_generator: torch.Generator | None = None,
                 augment: Callable[[Tensor, torch.Generator], Tensor] | None = None,
                 augment_generator: torch.Generator | None = None, backend: str = "inductor",
                 bf16: bool = False, autograd_in_graph: bool = True, after_step: Callable[[], None] | None = None,
                 on_compile: Callable[[tuple[int, ...], float], None] | None = None):  # fmt: skip
        reg = spec.regularization
        if reg.adversarial is not None:  # validation refuses it with train.compile; this is for direct callers
            raise ValueError("regularization.adversarial cannot be compiled: FGSM differentiates inside the step")
        self.model, self.optimizer, self.on_compile = model, optimizer, on_compile
        self.after_step = after_step  # the schedule's per-step advance, eager: it only writes group["lr"]
        # torch's schedulers warn when they step before the optimizer has; the compiled update is that step
        optimizer._opt_called = True  # type: ignore[attr-defined]
        self.augment, self.augment_generator = augment, augment_generator
        self.noise_std, self.noise_generator = reg.input_noise, noise_generator
        self.compiled_shapes: dict[tuple[tuple[int, ...], tuple[int, ...]], float] = {}
        device = next(model.parameters()).device
        self.cuda = device.type == "cuda"
        update, keys = optimizer_update(spec.optimizer)
        names = {id(p): name for name, p in model.named_parameters()}
        params = {name: p for name, p in model.named_parameters() if p.requires_grad}
        frozen = {name: p for name, p in model.named_parameters() if not p.requires_grad}
        buffers = dict(model.named_buffers())
        penalized = [names[id(p)] for p in split_parameters(model)[0]]
        # (lr tensor, decay, [(name, state)]) per optimizer group, in the group's order
        self.groups: list[tuple[Tensor, float, list[tuple[str, dict[str, Tensor]]]]] = []
        for group in optimizer.param_groups:
            lr = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)
            decay = _decay_rate(optimizer, group)
            members = [(names[id(p)], _state_tensors(optimizer, p, keys)) for p in group["params"]]
            self.groups.append((lr, decay, members))
        self._lrs = [float(group["lr"]) for group in optimizer.param_groups]
        if self.cuda:  # CUDA graphs: tensors the graph mutates must keep their addresses between replays
            for tensor in [*params.values(), *buffers.values()]:  # reached through dicts, not module attributes
                torch._dynamo.mark_static_address(tensor)
            for lr, _, members in self.groups:
                torch._dynamo.mark_static_address(lr)
                for _, state in members:
                    for tensor in state.values():
                        torch._dynamo.mark_static_address(tensor)
        l1, l2 = reg.l1, reg.l2
        max_norm, max_value = reg.clip_grad_norm, reg.clip_grad_value
        noise_std = self.noise_std
        autocast_bf16 = bf16
        groups = self.groups

        def penalty_of(trainable: dict[str, Tensor], loss: Tensor) -> Tensor:
            extra = torch.zeros((), device=loss.device)
            for name in penalized:  # the same terms, in the same order, as regularize.penalty
                weight = trainable[name]
                if l2:
                    extra = extra + l2 * weight.pow(2).sum()
                if l1:
                    extra = extra + l1 * weight.abs().sum()
            return extra

        def update_all(grads: dict[str, Tensor]) -> None:
            """Clip, decay and update every parameter in place (inside the graph, under no_grad)."""
            order = [name for _, _, members in groups for name, _ in members if name in grads]
            listed = [grads[name] for name in order]
            if max_norm is not None or max_value is not None:
                listed = _clip(listed, max_norm, max_value)
            by_name = dict(zip(order, listed))
            for lr, decay, members in groups:
                for name, state in members:
                    if name not in by_name:  # no gradient (an unused layer): torch's optimizers skip it too
                        continue
                    param = params[name]
                    if decay:
                        param.mul_(1 - lr * decay)
                    update(param, by_name[name], state, lr)

        def objective(trainable: dict[str, Tensor], state: dict[str, Tensor], x: Tensor, y: Tensor
                      ) -> tuple[Tensor, tuple[Tensor, Tensor]]:  # fmt: skip
            # The buffers are an argument, not captured: BatchNorm updates its running statistics in
            # place, which torch.func allows only on the transformed function's inputs.
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast_bf16):
                outputs = torch.func.functional_call(model, (trainable, frozen, state), (x,))
                loss = compute_loss(outputs, y)
            total = loss + penalty_of(trainable, loss) if (l1 or l2) else loss
            return total, (loss.detach(), outputs.detach())

        gradient = torch.func.grad_and_value(objective, has_aux=True)

        def train_step(x: Tensor, y: Tensor, noise: Tensor | None) -> tuple[Tensor, Tensor]:
            if noise is not None:
                x = x + noise_std * noise
            grads, (_, (loss, outputs)) = gradient(params, buffers, x, y)
            with torch.no_grad():
                update_all(grads)
            return loss, outputs

        # -- the two-graph step, for models with nnspec's custom ops (Triton kernels): torch.func cannot
        # differentiate a torch.library custom op, but AOTAutograd can, so the forward and loss are one
        # compiled graph (whose backward AOTAutograd compiles too), and the update another.

        def forward_loss(x: Tensor, y: Tensor, noise: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
            if noise is not None:
                x = x + noise_std * noise
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast_bf16):
                outputs = model(x)
                loss = compute_loss(outputs, y)
            total = loss + penalty_of(params, loss) if (l1 or l2) else loss
            return total, loss.detach(), outputs.detach()

        def update_from_grads() -> None:
            with torch.no_grad():
                update_all({name: p.grad for name, p in params.items() if p.grad is not None})

        self.two_graphs = not autograd_in_graph
        if self.two_graphs:
            self.compiled_forward = self._compile(_own_code(forward_loss), backend)
            self.compiled_update = self._compile(_own_code(update_from_grads), backend)
            self.params = list(params.values())
        else:
            self.compiled = self._compile(_own_code(train_step), backend)

    def _compile(self, function: Callable[..., Any], backend: str) -> Callable[..., Any]:
        options: dict[str, Any] = {}
        if GUARD_FILTER_SUPPORTED:
            options["guard_filter_fn"] = step_guards
        if backend == "inductor":
            # On CUDA a CUDA graph, replayed each step (what mode="reduce-overhead" sets; torch.compile
            # takes a mode or options, not both). On the CPU fallback_random: dropout draws torch's own
            # masks, so compiled and eager runs agree.
            options["triton.cudagraphs" if self.cuda else "fallback_random"] = True
        return torch.compile(function, fullgraph=True, dynamic=False, backend=backend, options=options)

    def _run(self, x: Tensor, y: Tensor, noise: Tensor | None) -> tuple[Tensor, Tensor]:
        if not self.two_graphs:
            return self.compiled(x, y, noise)
        total, loss, outputs = self.compiled_forward(x, y, noise)
        for param in self.params:
            param.grad = None
        total.backward()
        self.compiled_update()
        return loss, outputs

    def _sync_lrs(self) -> None:
        """Copy a learning rate the schedule changed into its tensor (no recompile: the tensor is an input)."""
        for i, group in enumerate(self.optimizer.param_groups):
            lr = group["lr"]
            if lr != self._lrs[i]:
                self._lrs[i] = lr
                self.groups[i][0].fill_(float(lr))

    def __call__(self, x: Tensor, y: Tensor, weight: float = 1.0) -> tuple[Tensor, Tensor]:
        if weight != 1.0:  # only a DDP shard has another weight, and DDP is refused before a step is built
            raise ValueError("the compiled step trains one process: the loss weight must be 1")
        self._sync_lrs()
        if self.augment is not None:
            x = self.augment(x, self.augment_generator)
        noise = None
        if self.noise_std:  # drawn exactly as regularize.noisy_inputs draws it
            noise = torch.randn(x.shape, generator=self.noise_generator, device=x.device, dtype=x.dtype)
        key = (x.shape, y.shape)  # torch.Size is a tuple: hashable as it is
        if key in self.compiled_shapes:
            loss, outputs = self._run(x, y, noise)
        else:
            start = time.perf_counter()
            loss, outputs = self._run(x, y, noise)
            seconds = time.perf_counter() - start
            self.compiled_shapes[key] = seconds
            if self.on_compile is not None:
                self.on_compile(tuple(key[0]), seconds)
        if self.after_step is not None:
            self.after_step()
        if self.cuda:  # the graph's pool is reused by the next replay; the epoch log keeps these
            loss, outputs = loss.clone(), outputs.clone()
        return loss, outputs

    @property
    def compile_seconds(self) -> float:
        """Wall time of every first call per shape (compilation, cache hits included)."""
        return math.fsum(self.compiled_shapes.values())
