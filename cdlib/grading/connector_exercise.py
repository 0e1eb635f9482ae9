"""Hidden cases of exercise 5: ``my_channel_attention(feature_map)`` and ``MyConnector(in, out)``.

The attention is judged against the spatial mean computed here; the connector by
its layers (a 1x1 convolution without bias, BatchNorm2d, ReLU, in that order)
and by its output in training mode, recomputed here from the student's own
convolution weights: conv, then normalisation with the batch's statistics
(BatchNorm's initial scale 1 and shift 0), then ReLU. Channel pairs and map
sizes are not the public check's (3 -> 5, 8 -> 4, 6 -> 6).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from .assignments import Assignment, Question, grads_problem

CONNECTOR_LAYERS = ["Conv2d", "BatchNorm2d", "ReLU"]


def _map(seed: int, shape: Tuple[int, int, int, int]) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    return torch.randn(n, c, h, w, generator=g) * (torch.rand(1, c, 1, 1, generator=g) * 2 + 0.5) \
        + torch.randn(1, c, 1, 1, generator=g)


def _attention_case(case_id: str, seed: int, shape) -> dict:
    x = _map(seed, shape)
    n, c, h, w = shape
    return {"id": case_id, "label": f"a {tuple(shape)} map", "function": "my_channel_attention", "args": [x],
            "grad": [0], "want": x.double().sum(dim=(2, 3)) / (h * w),
            "want_grads": [torch.full(shape, 1.0 / (h * w), dtype=torch.float64)]}


def _connector_case(case_id: str, seed: int, shape, out_channels: int) -> dict:
    return {"id": case_id, "label": f"{shape[1]} -> {out_channels} channels on a {tuple(shape)} map",
            "function": "MyConnector", "kind": "module", "args": [shape[1], out_channels], "input": _map(seed, shape)}


def connector_cases() -> List[dict]:
    return [
        _attention_case("ca-1", 501, (3, 5, 7, 4)),
        _attention_case("ca-2", 502, (1, 9, 1, 1)),
        _attention_case("ca-3", 503, (6, 2, 3, 8)),
        _connector_case("cn-1", 511, (5, 2, 4, 3), 9),
        _connector_case("cn-2", 512, (7, 12, 2, 5), 3),
        _connector_case("cn-3", 513, (4, 5, 6, 6), 5),
    ]


def _tensor_problem(outcome: dict, want: torch.Tensor) -> Optional[str]:
    if "error" in outcome:
        if outcome.get("not_implemented"):
            return "not implemented yet (it raises NotImplementedError)."
        return f"it raised {outcome['error']}."
    got = outcome.get("tensor")
    if got is None:
        return f"returned a {outcome.get('type')}, not a floating-point torch tensor."
    if tuple(got.shape) != tuple(want.shape):
        return f"returned shape {tuple(got.shape)}, expected {tuple(want.shape)}."
    err = float((got - want).abs().max())
    if not err <= 1e-5 + 1e-4 * float(want.abs().max()):
        return f"the values are off by up to {err:.3g}."
    return None


def _attention_value(case: dict, outcome: dict, _all=None) -> Optional[str]:
    return _tensor_problem(outcome, case["want"])


def _attention_grads(case: dict, outcome: dict, _all=None) -> Optional[str]:
    return _tensor_problem(outcome, case["want"]) or grads_problem(outcome, case["want_grads"], scalar=False)


def _layers(case: dict, outcome: dict, _all=None) -> Optional[str]:
    if "error" in outcome:
        return _tensor_problem(outcome, torch.zeros(0))
    module = outcome.get("module")
    if module is None:
        return "MyConnector(...) is not an nn.Module."
    if module["layers"] != CONNECTOR_LAYERS:
        return f"its layers are {module['layers']}; a connector is {CONNECTOR_LAYERS}, in that order."
    conv, (c_in, c_out) = module["conv"], case["args"]
    if conv["bias"]:
        return "the convolution has a bias: BatchNorm right after it makes a bias useless (bias=False)."
    if conv["kernel_size"] != [1, 1] or conv["stride"] != [1, 1] or conv["padding"] != [0, 0]:
        return f"the convolution is {conv['kernel_size']} with stride {conv['stride']} and padding {conv['padding']}; " \
               "a connector's is 1x1, stride 1, no padding."
    if (conv["in"], conv["out"], module["bn"]["features"]) != (c_in, c_out, c_out):
        return f"maps {conv['in']} -> {conv['out']} channels (BatchNorm over {module['bn']['features']}); " \
               f"expected {c_in} -> {c_out}."
    return None


def _output(case: dict, outcome: dict, _all=None) -> Optional[str]:
    problem = _layers(case, outcome)
    if problem:
        return f"its output cannot be checked: {problem}"
    module = outcome["module"]
    x = case["input"].double()
    y = F.conv2d(x, module["conv"]["weight"])
    mean = y.mean(dim=(0, 2, 3), keepdim=True)
    var = y.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    want = torch.relu((y - mean) / torch.sqrt(var + module["bn"]["eps"]))
    problem = _tensor_problem(outcome, want)
    return f"in training mode, {problem}" if problem else None


CONNECTOR = Assignment(
    name="exercise5_connector",
    function="my_channel_attention",
    extra_names=("MyConnector",),
    signature="my_channel_attention(feature_map) and MyConnector(in_channels, out_channels)",
    questions=(
        Question("attention_value", 3, "my_channel_attention returns the (N, C) spatial means",
                 ("ca-1", "ca-2", "ca-3"), _attention_value),
        Question("attention_gradient", 1, "gradients flow through my_channel_attention", ("ca-1", "ca-3"),
                 _attention_grads),
        Question("connector_layers", 3, "MyConnector is a 1x1 convolution without bias, BatchNorm2d, ReLU",
                 ("cn-1", "cn-2", "cn-3"), _layers),
        Question("connector_output", 3, "MyConnector's output in training mode, from its own weights",
                 ("cn-1", "cn-2", "cn-3"), _output),
    ),
    make_cases=connector_cases,
    forbidden_modules=("cdlib.losses", "cdlib.connectors", "cdlib.checks"),
    public_check={"name": "check_channel_attention"},
)
