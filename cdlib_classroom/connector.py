"""Exercise 5, channel attention and the connector: the public checks ``check_channel_attention`` and
``check_connector`` with their cases and catalogues of named mistakes, the hidden cases the grader scores, and
the exercise's record (:data:`EXERCISE`).

A wrong channel attention is recognised by what it returns (shape and values) on the
same map. A wrong connector is recognised by its output in training mode, compared
with the usual wrong arrangements of conv, BatchNorm and ReLU built from the
student's OWN convolution weights (so a random initialisation does not matter); a
bias in the convolution does not change that output (BatchNorm subtracts the batch
mean), so it is found by looking at the convolution itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from cdlib import losses

from . import references
from .checking import Call, call, crash_report, fail, function_name, generator, modified, run_check, snapshot
from .outcome import grads_problem, tensor_problem, tensors_close
from .record import CLASSROOM, Exercise, Mistake, Question

__all__ = ["check_channel_attention", "check_connector", "MapCase", "ATTENTION_CASES", "CONNECTOR_CASES",
           "ATTENTION_MISTAKES", "CONNECTOR_MISTAKES", "make_map", "CONNECTOR_LAYERS", "HIDDEN", "hidden_cases",
           "EXERCISE"]

ATTENTION_CHECK = "check_channel_attention"
CONNECTOR_CHECK = "check_connector"


@dataclass(frozen=True)
class MapCase:
    label: str
    seed: int
    shape: Tuple[int, int, int, int]  # N, C, H, W
    out_channels: int = 0  # connector cases: the teacher's channel count


ATTENTION_CASES: Tuple[MapCase, ...] = (
    MapCase("a (4, 6, 5, 3) map: 4 samples, 6 channels, H=5, W=3", 51, (4, 6, 5, 3)),
    MapCase("a (1, 8, 4, 4) map: one sample", 52, (1, 8, 4, 4)),
    MapCase("a (3, 1, 6, 6) map: one channel", 53, (3, 1, 6, 6)),
    MapCase("a (2, 16, 1, 1) map: H = W = 1", 54, (2, 16, 1, 1)),
)
CONNECTOR_CASES: Tuple[MapCase, ...] = (
    MapCase("3 -> 5 channels on a (6, 3, 4, 5) map", 61, (6, 3, 4, 5), 5),
    MapCase("8 -> 4 channels on a (4, 8, 3, 3) map", 62, (4, 8, 3, 3), 4),
    MapCase("6 -> 6 channels on a (5, 6, 2, 7) map", 63, (5, 6, 2, 7), 6),
)


def make_map(case: MapCase) -> torch.Tensor:
    """A feature map with grad whose channels have clearly different means and signs."""
    g = generator(case.seed)
    n, c, h, w = case.shape
    shift = torch.rand(1, c, 1, 1, generator=g) * 2 - 0.6
    return (torch.randn(n, c, h, w, generator=g) * (0.5 + torch.rand(1, c, 1, 1, generator=g)) + shift).requires_grad_()


# ---------------------------------------------------------------- channel attention: the catalogue

_DIMS = ("pooled over the wrong dimensions: you averaged over {what}. Channel attention averages each channel over "
         "H and W (dims 2 and 3) and returns one number per sample and channel, shape (N, C).")

ATTENTION_MISTAKES: Tuple[Mistake, ...] = (
    Mistake("max_pooling", "used max instead of mean pooling: channel attention is the spatial MEAN of each channel "
            "(global average pooling), x.mean(dim=(2, 3)).", lambda x: x.amax(dim=(2, 3))),
    Mistake("sum_pooling", "summed over H x W instead of averaging: channel attention is the MEAN, 1/(HW) * sum, so "
            "that maps of different sizes are comparable.", lambda x: x.sum(dim=(2, 3))),
    Mistake("kept_dims", "kept the pooled dimensions: you return shape (N, C, 1, 1) (keepdim=True, or "
            "F.adaptive_avg_pool2d(x, 1) alone); return (N, C): add .flatten(1), or keepdim=False.",
            lambda x: x.mean(dim=(2, 3), keepdim=True)),
    Mistake("spatial_attention", _DIMS.format(what="the channels (dim 1), which gives SPATIAL attention, (N, H, W)"),
            lambda x: x.mean(dim=1)),
    Mistake("over_h_only", _DIMS.format(what="H only (dim 2), which leaves (N, C, W)"), lambda x: x.mean(dim=2)),
    Mistake("over_w_only", _DIMS.format(what="W only (dim 3), which leaves (N, C, H)"), lambda x: x.mean(dim=3)),
    Mistake("over_everything", _DIMS.format(what="channels, H and W: one number per sample"),
            lambda x: x.mean(dim=(1, 2, 3))),
    Mistake("over_the_batch", _DIMS.format(what="the batch too (dims 0, 2, 3): one number per channel, shared by "
                                                "every sample"), lambda x: x.mean(dim=(0, 2, 3))),
    Mistake("over_the_batch_kept", _DIMS.format(what="the batch too (dims 0, 2, 3) and broadcast it back: every "
                                                     "sample gets the batch's attention"),
            lambda x: x.mean(dim=(0, 2, 3)).expand(x.shape[0], -1)),
    Mistake("mean_of_squares", "pooled the SQUARED map (attention-transfer style): channel attention is the spatial "
            "mean of the map itself.", lambda x: x.pow(2).mean(dim=(2, 3))),
    Mistake("mean_of_absolute_values", "pooled the absolute values: channel attention is the spatial mean of the map "
            "itself, signs included.", lambda x: x.abs().mean(dim=(2, 3))),
    Mistake("softmax_normalised", "normalised the attention over the channels (softmax): CD compares the raw "
            "channel means.", lambda x: F.softmax(x.mean(dim=(2, 3)), dim=1)),
    Mistake("l2_normalised", "normalised the attention vectors (L2): CD compares the raw channel means.",
            lambda x: F.normalize(x.mean(dim=(2, 3)), dim=1)),
)


def _attention_problem(result: Call, x: torch.Tensor, case: MapCase) -> Optional[str]:
    """What is wrong with ``result`` as the channel attention of ``x`` (the input as it was before the call)."""
    if not result.ok:
        return crash_report(result.error, case.label)
    got = result.value
    if not isinstance(got, torch.Tensor):
        return f"returned a {type(got).__name__} on {case.label}; return a torch tensor of shape (N, C)."
    want = losses.channel_attention(x)
    if tensors_close(got, want):
        return None
    where = f"(on {case.label}: you return shape {tuple(got.shape)}, expected {tuple(want.shape)})"
    if got.numel() == want.numel() and tensors_close(got.reshape(want.shape), want):  # right numbers, wrong shape
        kept = next(m for m in ATTENTION_MISTAKES if m.name == "kept_dims")
        squeezed = "right numbers in the wrong shape: return (N, C) (did you squeeze or reshape?)."
        return f"{kept.diagnosis if got.dim() == 4 else squeezed}\n{where}"
    x64 = x.detach().double()
    for mistake in ATTENTION_MISTAKES:
        if tensors_close(got, mistake.wrong(x64)):
            return f"{mistake.diagnosis}\n(on {case.label})"
    if tuple(got.shape) != tuple(want.shape):
        return f"wrong shape: channel attention has one number per sample and channel.\n{where}"
    return ("the values differ from the spatial means and match none of the usual mistakes: average each channel "
            f"over H and W, x.mean(dim=(2, 3)).\n(on {case.label})")


def _attention_gradient_problem(got: torch.Tensor, x: torch.Tensor, case: MapCase) -> Optional[str]:
    """Whether a real gradient flows from the attention back to the map: a weighted sum of the result is
    differentiated with respect to ``x`` and compared with the spatial mean's gradient (``requires_grad`` alone
    is not enough: a tensor rebuilt from ``.item()`` values with ``requires_grad=True`` has it)."""
    weights = torch.randn(got.shape, generator=generator(case.seed + 1000), dtype=got.dtype)
    n, c, h, w = x.shape
    want = (weights.double() / (h * w))[:, :, None, None].expand(n, c, h, w)
    try:
        grad = torch.autograd.grad((got * weights).sum(), [x], allow_unused=True)[0]
    except RuntimeError:
        grad = None
    if grad is None or not tensors_close(grad, want):
        return ("the values are right but gradients don't flow back to the feature map: the result is not computed "
                "from it in the graph (.detach(), .item(), torch.tensor(...), a new tensor with requires_grad=True, "
                "or torch.no_grad()?). The CD loss trains the student through its channel attention."
                f"\n(on {case.label})")
    return None


def check_channel_attention(fn: Callable, verbose: bool = True) -> None:
    """Check ``fn(feature_map) -> (N, C)`` against :func:`cdlib.losses.channel_attention` (the spatial mean)."""
    name = function_name(fn)
    run_check(ATTENTION_CHECK, name, lambda: _check_attention(fn, name, verbose))


def _check_attention(fn: Callable, name: str, verbose: bool) -> None:
    for case in ATTENTION_CASES:
        x = make_map(case)
        before = snapshot([x])
        result = call(fn, x)
        problem = _attention_problem(result, before[0], case)
        if problem is None:
            problem = _attention_gradient_problem(result.value, x, case)
        if problem is None and modified(before, [x]):
            problem = "modified the feature map in place: channel attention must leave its input unchanged."
        if problem:
            fail(ATTENTION_CHECK, name, [problem])
    if verbose:
        print(f"✓ {ATTENTION_CHECK} passed: {name} matches cdlib.losses.channel_attention on "
              f"{len(ATTENTION_CASES)} feature maps.")


# ---------------------------------------------------------------- the connector: the catalogue


def _bn(x: torch.Tensor) -> torch.Tensor:
    """BatchNorm in training mode, freshly initialised (weight 1, bias 0, eps 1e-5)."""
    return F.batch_norm(x, None, None, training=True, eps=references.BATCHNORM_EPS)


def _conv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, weight)


_ORDER = "put the layers in the wrong order ({order}): a connector is 1x1 conv -> BatchNorm -> ReLU."
# Each wrong connector's output, in training mode, from the input and the student's 1x1 conv weight.
CONNECTOR_MISTAKES: Tuple[Mistake, ...] = (
    Mistake("no_batchnorm", "left out the BatchNorm: a connector is 1x1 conv -> BatchNorm2d(out_channels) -> ReLU; "
            "BatchNorm puts the student's channels on a common scale before they are compared with the teacher's.",
            lambda x, w: F.relu(_conv(x, w))),
    Mistake("no_relu", "left out the ReLU: a connector is 1x1 conv -> BatchNorm -> ReLU; the teacher's stage "
            "outputs are non-negative (they come out of a ReLU), so the student's must be too.",
            lambda x, w: _bn(_conv(x, w))),
    Mistake("conv_only", "left out both BatchNorm and ReLU: a connector is 1x1 conv -> BatchNorm -> ReLU.",
            lambda x, w: _conv(x, w)),
    Mistake("relu_before_batchnorm", _ORDER.format(order="ReLU before BatchNorm"),
            lambda x, w: _bn(F.relu(_conv(x, w)))),
    Mistake("relu_first", _ORDER.format(order="ReLU on the input, before the conv"),
            lambda x, w: _bn(_conv(F.relu(x), w))),
    Mistake("batchnorm_first", _ORDER.format(order="BatchNorm on the input, before the conv"),
            lambda x, w: F.relu(_conv(_bn(x), w))),
    Mistake("batchnorm_first_no_relu", _ORDER.format(order="BatchNorm before the conv") + " And end with a ReLU.",
            lambda x, w: _conv(_bn(x), w)),
)


def _conv_of(module: nn.Module, in_channels: int, out_channels: int):
    """The module's 1x1 convolution from ``in_channels`` to ``out_channels``, or a sentence saying why there is none."""
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
        return None, ("has no nn.Conv2d" + (" (it has an nn.Linear, which mixes whole flattened maps)" if linears
                                            else "") + ": a connector starts with a 1x1 convolution, "
                      "nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False).")
    if len(convs) > 1:
        return None, f"has {len(convs)} convolutions: a connector has exactly one, a 1x1 nn.Conv2d."
    conv = convs[0]
    if tuple(conv.kernel_size) != (1, 1):
        return None, (f"its convolution has kernel_size={tuple(conv.kernel_size)}: a connector's is 1x1 "
                      "(it mixes channels at each position, and adds no spatial context).")
    if (conv.in_channels, conv.out_channels) != (in_channels, out_channels):
        return None, (f"its convolution maps {conv.in_channels} -> {conv.out_channels} channels, asked for "
                      f"{in_channels} -> {out_channels}: nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False).")
    if conv.stride != (1, 1) or conv.groups != 1 or conv.padding not in ((0, 0), "valid", "same"):
        return None, "its convolution changes the map's size or groups the channels: use the defaults (stride 1, " \
                     "no padding, groups 1)."
    if conv.bias is not None:
        return None, ("its convolution has a bias: the BatchNorm right after it subtracts each channel's mean, which "
                      "cancels any bias, so the bias is a wasted parameter. Use bias=False (as the paper's "
                      "connector does).")
    return conv, None


def _connector_problem(cls, case: MapCase) -> Optional[str]:
    n, c_in, h, w = case.shape
    made = call(cls, c_in, case.out_channels)
    if not made.ok:
        return crash_report(made.error, f"building it with in_channels={c_in}, out_channels={case.out_channels}")
    module = made.value
    if not isinstance(module, nn.Module):
        return (f"called with ({c_in}, {case.out_channels}) it gave a {type(module).__name__}, not a torch.nn.Module: "
                "write a class derived from nn.Module (or nn.Sequential).")
    conv, why = _conv_of(module, c_in, case.out_channels)
    if conv is None:
        return f"{why}\n(built with in_channels={c_in}, out_channels={case.out_channels})"
    module.train()
    x = make_map(case)
    before = snapshot([x])
    result = call(module, x)
    if not result.ok:
        return crash_report(result.error, f"the forward pass, {case.label}")
    y = result.value
    if not isinstance(y, torch.Tensor) or tuple(y.shape) != (n, case.out_channels, h, w):
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        return f"returned {shape} on {case.label}, expected a map of shape {(n, case.out_channels, h, w)}."
    return _output_problem(module, conv, x, y, before, case)


def _output_problem(module, conv, x, y, before, case: MapCase) -> Optional[str]:
    weight, x64 = conv.weight.detach().double(), x.detach().double()
    if not tensors_close(y, references.connector_output(x64, weight)):
        for mistake in CONNECTOR_MISTAKES:
            if tensors_close(y, mistake.wrong(x64, weight)):
                return f"{mistake.diagnosis}\n(on {case.label}, in training mode)"
        return ("the output (in training mode) is not relu(batchnorm(conv1x1(x))) and matches none of the usual "
                f"mistakes: conv -> BatchNorm2d(out_channels) -> ReLU, nothing else.\n(on {case.label})")
    if not y.requires_grad:
        return "the output is not connected to the input: gradients must flow from the CD loss into the student."
    if modified(before, [x]):
        return ("modified its input in place (an in-place ReLU on the INPUT?): the connector must leave the student's "
                "feature map unchanged; nn.ReLU(inplace=True) after the BatchNorm is fine.")
    grad = torch.autograd.grad(y.sum(), [conv.weight], allow_unused=True)[0]
    if grad is None:
        return "no gradient reaches the convolution's weight: the connector is trained with the student."
    return None


def check_connector(cls: Callable, verbose: bool = True) -> None:
    """Check ``cls(in_channels, out_channels)``: a module whose forward is 1x1 conv (no bias) -> BatchNorm -> ReLU.

    ``cls`` is a class (or any function) taking the two channel counts and returning an
    ``nn.Module``; compared with :class:`cdlib.connectors.Connector` in training mode.
    """
    name = function_name(cls, "your connector")
    run_check(CONNECTOR_CHECK, name, lambda: _check_connector(cls, name, verbose))


def _check_connector(cls: Callable, name: str, verbose: bool) -> None:
    for case in CONNECTOR_CASES:
        with torch.random.fork_rng(devices=[]):  # building the module initialises it from the global generator
            torch.manual_seed(case.seed)
            problem = _connector_problem(cls, case)
        if problem:
            fail(CONNECTOR_CHECK, name, [problem])
    if verbose:
        print(f"✓ {CONNECTOR_CHECK} passed: {name} is a 1x1 conv -> BatchNorm -> ReLU connector on "
              f"{len(CONNECTOR_CASES)} channel pairs.")


# ---------------------------------------------------------------- grading: hidden cases and questions

CONNECTOR_LAYERS = ["Conv2d", "BatchNorm2d", "ReLU"]
# Not the public check's maps and channel pairs.
HIDDEN: Dict[str, MapCase] = {
    "ca-1": MapCase("a (3, 5, 7, 4) map", 501, (3, 5, 7, 4)),
    "ca-2": MapCase("a (1, 9, 1, 1) map", 502, (1, 9, 1, 1)),
    "ca-3": MapCase("a (6, 2, 3, 8) map", 503, (6, 2, 3, 8)),
    "cn-1": MapCase("2 -> 9 channels on a (5, 2, 4, 3) map", 511, (5, 2, 4, 3), 9),
    "cn-2": MapCase("12 -> 3 channels on a (7, 12, 2, 5) map", 512, (7, 12, 2, 5), 3),
    "cn-3": MapCase("5 -> 5 channels on a (4, 5, 6, 6) map", 513, (4, 5, 6, 6), 5),
}


def hidden_cases() -> List[dict]:
    """The grader's cases: maps for my_channel_attention, with the right attention (cdlib.losses.channel_attention
    in float64) and gradient; channel pairs and a map for MyConnector, judged from its own weights."""
    out = []
    for case_id, case in HIDDEN.items():
        x = make_map(case).detach()
        if case.out_channels:
            out.append({"id": case_id, "label": case.label, "function": "MyConnector", "kind": "module",
                        "args": [case.shape[1], case.out_channels], "input": x})
            continue
        want, grads = references.answer(losses.channel_attention, [x])
        out.append({"id": case_id, "label": case.label, "function": "my_channel_attention", "args": [x], "grad": [0],
                    "want": want, "want_grads": grads})
    return out


def _attention_value(case: dict, outcome: dict, _all=None) -> Optional[str]:
    return tensor_problem(outcome, case["want"])


def _attention_grads(case: dict, outcome: dict, _all=None) -> Optional[str]:
    return tensor_problem(outcome, case["want"]) or grads_problem(outcome, case["want_grads"], scalar=False)


def _the_conv(module: dict, c_in: int, c_out: int):
    """(the connector's 1x1 convolution, None) or (None, what is wrong), judged on what the layers do."""
    convs = module["convs"]
    if len(convs) != 1:
        return None, (f"it has {len(convs)} nn.Conv2d layers; a connector has exactly one, a 1x1 convolution "
                      f"from {c_in} to {c_out} channels.")
    conv = convs[0]
    if conv["kernel_size"] != [1, 1] or conv["stride"] != [1, 1] or conv["groups"] != 1:
        return None, (f"the convolution is {conv['kernel_size']} with stride {conv['stride']} and groups "
                      f"{conv['groups']}; a connector's is 1x1, stride 1, groups 1.")
    if conv["padding"] not in ([0, 0], "valid", "same"):  # padding="same" adds nothing to a 1x1 convolution
        return None, f"the 1x1 convolution pads the map by {conv['padding']}, which changes its size: use no padding."
    if (conv["in"], conv["out"]) != (c_in, c_out):
        return None, f"the convolution maps {conv['in']} -> {conv['out']} channels; expected {c_in} -> {c_out}."
    return conv, None


def _layers(case: dict, outcome: dict, _all=None) -> Optional[str]:
    if "error" in outcome:
        return tensor_problem(outcome, torch.zeros(0))
    module = outcome.get("module")
    if module is None:
        return "MyConnector(...) is not an nn.Module."
    c_in, c_out = case["args"]
    conv, problem = _the_conv(module, c_in, c_out)
    if problem:
        return problem
    if conv["bias"] is not None:
        return "the convolution has a bias: BatchNorm right after it makes a bias useless (bias=False)."
    bns = module["bns"]
    if len(bns) != 1 or bns[0]["type"] != "BatchNorm2d" or bns[0]["features"] != c_out:
        found = ", ".join(f"{b['type']}({b['features']})" for b in bns) or "none"
        return f"a connector has one BatchNorm2d({c_out}) after its convolution; found {found}."
    return None


def connector_reference(case: dict, module: dict) -> Optional[torch.Tensor]:
    """relu(batchnorm(conv1x1(x))) in training mode from the student's own convolution (bias included: BatchNorm
    cancels it), or None when the module has no single right-sized 1x1 convolution."""
    c_in, c_out = case["args"]
    conv, _ = _the_conv(module, c_in, c_out)
    if conv is None:
        return None
    eps = module["bns"][0]["eps"] if len(module["bns"]) == 1 else references.BATCHNORM_EPS
    x = case["input"].double()
    if conv["bias"] is not None:
        x_conv = F.conv2d(x, conv["weight"], conv["bias"])
        return F.relu(F.batch_norm(x_conv, None, None, training=True, eps=eps))
    return references.connector_output(x, conv["weight"], eps)


def _output(case: dict, outcome: dict, _all=None) -> Optional[str]:
    if "error" in outcome:
        return tensor_problem(outcome, torch.zeros(0))
    module = outcome.get("module")
    if module is None:
        return "MyConnector(...) is not an nn.Module."
    want = connector_reference(case, module)
    if want is None:
        return f"its output cannot be checked: {_the_conv(module, *case['args'])[1]}"
    problem = tensor_problem(outcome, want)
    if problem and outcome.get("tensor") is not None and tuple(outcome["tensor"].shape) == tuple(want.shape):
        conv = _the_conv(module, *case["args"])[0]
        for mistake in CONNECTOR_MISTAKES:
            if tensors_close(outcome["tensor"], mistake.wrong(case["input"].double(), conv["weight"])):
                return f"in training mode, {mistake.diagnosis}"
    return f"in training mode, {problem}" if problem else None


EXERCISE = Exercise(
    name="exercise5_connector",
    function="my_channel_attention",
    extra_names=("MyConnector",),
    signature="my_channel_attention(feature_map) -> (N, C) tensor and MyConnector(in_channels, out_channels) -> "
              "nn.Module",
    check=check_channel_attention,  # the first of its two checks; check_connector is the second
    cases=ATTENTION_CASES + CONNECTOR_CASES,
    mistakes={"attention": ATTENTION_MISTAKES, "connector output": CONNECTOR_MISTAKES},
    questions=(
        Question("attention_value", 3, "my_channel_attention returns the (N, C) spatial means",
                 ("ca-1", "ca-2", "ca-3"), _attention_value),
        Question("attention_gradient", 1, "gradients flow through my_channel_attention", ("ca-1", "ca-3"),
                 _attention_grads),
        Question("connector_layers", 3, "MyConnector has one 1x1 convolution without bias and one BatchNorm2d",
                 ("cn-1", "cn-2", "cn-3"), _layers),
        Question("connector_output", 3, "MyConnector's output in training mode (conv -> BatchNorm -> ReLU), from "
                 "its own weights",
                 ("cn-1", "cn-2", "cn-3"), _output),
    ),
    hidden_cases=hidden_cases,
    forbidden_modules=("cdlib.losses", "cdlib.connectors", "cdlib_bench.steps", CLASSROOM),
    extra_checks=(("MyConnector", check_connector),),
)
