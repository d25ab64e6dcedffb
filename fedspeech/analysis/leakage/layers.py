"""The layers (module groups) of each model: their hidden outputs, and which parameters they own.

A leakage analysis compares two versions of one model layer by layer, twice: through the hidden
outputs on a fixed set of utterances (footprints) and through the parameters themselves (weight
deltas). `layer_taps(model)` returns, per model family, both views under the same layer names:

- tiny CTC: `frontend` (convolutions + projection), `rnn.0` .. `rnn.{L-1}` (each BiGRU layer),
  `head` (character logits);
- SSL CTC (wav2vec2 / HuBERT / WavLM): `features` (CNN features projected to the transformer
  width; also owns the positional convolution and encoder norms), `layer.0` .. (each transformer
  layer), `head`;
- SpeechLLM: `encoder` (only when it is fine-tuned), `connector`, `lm.layer.0` .. (the LoRA-adapted
  LM layers; LoRA parameters of layer i belong to `lm.layer.i`).

Hidden outputs are taken with forward hooks while the model runs its own forward pass, so the
analysis sees exactly what training and evaluation compute (normalisation, masks, subsampling).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fedspeech.data.batching import Batch
from fedspeech.models.base import SpeechModel
from fedspeech.models.speechllm import SpeechLLM
from fedspeech.models.ssl_ctc import SSLCTC
from fedspeech.models.tiny import TinyCTC

#: layer name -> (states (B, T, D), valid (B, T) bool)
LayerStates = dict[str, tuple[torch.Tensor, torch.Tensor]]


def _valid(lens: torch.Tensor, total: int) -> torch.Tensor:
    return torch.arange(total, device=lens.device)[None] < lens.to(torch.long)[:, None]


def _first(output: Any) -> torch.Tensor:
    """A module's main output (HF layers may return a tuple whose first item is the states)."""
    return output[0] if isinstance(output, (tuple, list)) else output


class _Capture:
    """Forward hooks that keep the latest output (or input) of some modules, removed on exit."""

    def __init__(self, modules: dict[str, nn.Module], inputs: bool = False) -> None:
        self.modules, self.inputs = modules, inputs
        self.values: dict[str, Any] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> "_Capture":
        for name, module in self.modules.items():
            if self.inputs:
                hook = self._keep_input(name)
                self._handles.append(module.register_forward_pre_hook(hook))
            else:
                self._handles.append(module.register_forward_hook(self._keep_output(name)))
        return self

    def _keep_output(self, name: str) -> Callable:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            self.values[name] = output
        return hook

    def _keep_input(self, name: str) -> Callable:
        def hook(_module: nn.Module, inputs: Any) -> None:
            self.values[name] = inputs[0]
        return hook

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()


class LayerTaps:
    """Per-layer hidden outputs of one model family, and the owner layer of each parameter."""

    def __init__(self, model: SpeechModel) -> None:
        self.model = model

    @property
    def names(self) -> list[str]:
        raise NotImplementedError

    def layer_of(self, param: str) -> str:
        """The layer a parameter (by its `named_parameters` name) belongs to."""
        raise NotImplementedError

    def states(self, batch: Batch) -> LayerStates:
        raise NotImplementedError


class TinyTaps(LayerTaps):
    """Front-end and head by hooks; each BiGRU layer by running the GRU one layer at a time.

    `nn.GRU(num_layers=L)` exposes only its last layer's output, so its weights are split into L
    single-layer GRUs (the same computation in eval mode, where inter-layer dropout is off).
    """

    model: TinyCTC
    _RNN = re.compile(r"^rnn\.(weight|bias)_(ih|hh)_l(\d+)(_reverse)?$")

    @property
    def names(self) -> list[str]:
        return ["frontend", *[f"rnn.{i}" for i in range(self.model.rnn.num_layers)], "head"]

    def layer_of(self, param: str) -> str:
        if param.startswith(("conv.", "proj.")):
            return "frontend"
        m = self._RNN.match(param)
        if m:
            return f"rnn.{m.group(3)}"
        if param.startswith("head."):
            return "head"
        raise KeyError(f"tiny model parameter {param!r} has no layer")

    def _single_layers(self) -> list[nn.GRU]:
        rnn = self.model.rnn
        layers = []
        for i in range(rnn.num_layers):
            width = rnn.input_size if i == 0 else rnn.hidden_size * (2 if rnn.bidirectional else 1)
            one = nn.GRU(width, rnn.hidden_size, num_layers=1, batch_first=True,
                         bidirectional=rnn.bidirectional).to(rnn.weight_ih_l0.device)
            weights = {name.replace(f"_l{i}", "_l0"): p for name, p in rnn.named_parameters()
                       if re.search(rf"_l{i}(_reverse)?$", name)}
            one.load_state_dict(weights)
            layers.append(one.eval())
        return layers

    def states(self, batch: Batch) -> LayerStates:
        model = self.model
        with _Capture({"frontend": model.proj, "head": model.head}) as out, \
                _Capture({"rnn": model.rnn}, inputs=True) as rnn_in:
            model.logits(batch)
        packed = rnn_in.values["rnn"]
        result: LayerStates = {}
        front = out.values["frontend"]
        lens = None
        for i, layer in enumerate(self._single_layers()):
            packed, _ = layer(packed)
            padded, lens = nn.utils.rnn.pad_packed_sequence(packed, batch_first=True,
                                                            total_length=front.shape[1])
            result[f"rnn.{i}"] = (padded, _valid(lens.to(front.device), padded.shape[1]))
        valid = _valid(lens.to(front.device), front.shape[1])
        return {"frontend": (front, valid), **result, "head": (out.values["head"], valid)}


class SSLTaps(LayerTaps):
    """Projected CNN features, every transformer layer's output, and the CTC head, by hooks."""

    model: SSLCTC
    _LAYER = re.compile(r"^encoder\.encoder\.layers\.(\d+)\.")

    def _layers(self) -> nn.ModuleList:
        return self.model.encoder.encoder.layers

    @property
    def names(self) -> list[str]:
        return ["features", *[f"layer.{i}" for i in range(len(self._layers()))], "head"]

    def layer_of(self, param: str) -> str:
        m = self._LAYER.match(param)
        if m:
            return f"layer.{m.group(1)}"
        if param.startswith("head."):
            return "head"
        if param.startswith("encoder."):
            return "features"
        raise KeyError(f"SSL CTC parameter {param!r} has no layer")

    def states(self, batch: Batch) -> LayerStates:
        model = self.model
        modules = {"features": model.encoder.feature_projection,
                   **{f"layer.{i}": layer for i, layer in enumerate(self._layers())},
                   "head": model.head}
        with _Capture(modules) as out:
            logits, lens = model.logits(batch)
        valid = _valid(lens, logits.shape[1])
        return {name: (_first(out.values[name]), valid) for name in self.names}


class SpeechLLMTaps(LayerTaps):
    """Connector outputs over the speech frames; LM layer outputs over the whole prompt."""

    model: SpeechLLM
    _LAYER = re.compile(r"\.layers\.(\d+)\.")

    def _lm_layers(self) -> nn.ModuleList:
        base = self.model.llm.get_base_model()
        layers = getattr(getattr(base, "model", base), "layers", None)
        if not isinstance(layers, nn.ModuleList):
            raise TypeError(f"cannot find the decoder layers of {type(base).__name__}")
        return layers

    @property
    def names(self) -> list[str]:
        head = ["encoder"] if self.model.finetune_encoder else []
        return [*head, "connector", *[f"lm.layer.{i}" for i in range(len(self._lm_layers()))]]

    def layer_of(self, param: str) -> str:
        if param.startswith("connector."):
            return "connector"
        if param.startswith("encoder."):
            return "encoder"
        m = self._LAYER.search(param)
        if param.startswith("llm.") and m:
            return f"lm.layer.{m.group(1)}"
        raise KeyError(f"SpeechLLM parameter {param!r} has no layer")

    def states(self, batch: Batch) -> LayerStates:
        model = self.model
        layers = {f"lm.layer.{i}": layer for i, layer in enumerate(self._lm_layers())}
        with _Capture({"encoder": model.encoder, "connector": model.connector}) as parts, \
                _Capture(layers) as out:
            inputs = model.build_inputs(batch, with_answer=False)
            model.llm(inputs_embeds=inputs.embeds, attention_mask=inputs.attention_mask,
                      use_cache=False)
        states, frames = parts.values["encoder"]
        speech = parts.values["connector"]
        result: LayerStates = {}
        if model.finetune_encoder:
            result["encoder"] = (states, _valid(frames, states.shape[1]))
        n_speech = model.connector.output_lengths(frames).clamp(max=speech.shape[1])
        result["connector"] = (speech, _valid(n_speech, speech.shape[1]))
        prompt = inputs.attention_mask.bool()
        for name in layers:
            result[name] = (_first(out.values[name]), prompt)
        return result


def layer_taps(model: SpeechModel) -> LayerTaps:
    """The taps of a model's family; a clear error for a model the analysis does not know."""
    for kind, taps in ((TinyCTC, TinyTaps), (SSLCTC, SSLTaps), (SpeechLLM, SpeechLLMTaps)):
        if isinstance(model, kind):
            return taps(model)
    raise TypeError(f"the leakage analysis has no layer map for {type(model).__name__}; "
                    "it knows TinyCTC, SSLCTC and SpeechLLM")
