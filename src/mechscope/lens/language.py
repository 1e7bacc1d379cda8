"""Latent language (Wendler et al. 2024, "Do Llamas Work in English?"): how much of each
layer's lens distribution falls on the answer written in each language.

    answers = {"en": [" flower", ...], "fr": [" fleur", ...]}   # one entry per prompt
    result = ms.lens.latent_language(model, prompts, answers)
    result.plot()        # layers on x, probability mass per language, shaded 95% CI

Each entry is one token or a set of tokens (e.g. with and without a leading space: the
paper sums over such variants). The mass of a language at a layer is the lens
probability summed over its set, read at one position (the last, by default) through the
logit lens or a translator (tuned lens); the curves are means over prompts with a
Student-t confidence interval.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..errors import MechscopeError
from ..plots import figure
from ..results import Saveable, pandas
from ..tokens import decode, require_lm_head, token_ids
from . import _common as C

log = logging.getLogger(__name__)

Answer = str | int | Sequence[str | int]


@dataclass
class LatentLanguage(Saveable):
    """Probability mass per language, per stream and prompt, and its mean with a CI."""

    KIND = "latent_language"

    model_name: str
    layers: list[str]
    sites: list[str]
    languages: list[str]
    mass: Float[Tensor, "layer batch language"]
    """Lens probability summed over each language's answer tokens."""
    entropy: Float[Tensor, "layer batch"]
    """Entropy (nats) of the lens distribution."""
    mean: Float[Tensor, "layer language"]
    lower: Float[Tensor, "layer language"]
    upper: Float[Tensor, "layer language"]
    answer_ids: Int[Tensor, "batch language answer"]
    """Token ids of each prompt's answer set per language, padded with -1."""
    confidence: float = 0.95
    position: int = -1
    translator: str = "identity"

    def plot(self, ax=None, colors: Mapping[str, str] | None = None):
        """The paper's figure: one line per language (mean over prompts), shaded CI."""
        fig, ax = figure(6.0, 3.0) if ax is None else (ax.figure, ax)
        x = list(range(len(self.layers)))
        for li, language in enumerate(self.languages):
            color = (colors or {}).get(language)
            (line,) = ax.plot(x, self.mean[:, li].numpy(), label=language, color=color, linewidth=2)
            ax.fill_between(x, self.lower[:, li].numpy(), self.upper[:, li].numpy(), color=line.get_color(), alpha=0.25)
        ax.set_xticks(x, self.layers, rotation=60, fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel("probability")
        ax.set_xlabel("layer")
        lens = "logit lens" if self.translator == "identity" else self.translator
        ax.set_title(
            f"latent language ({lens}, {int(self.confidence * 100)}% CI, n={self.mass.shape[1]}): {self.model_name}",
            fontsize=9,
        )
        ax.legend(fontsize=8)
        ax.grid(axis="x", alpha=0.3)
        return fig

    def to_frame(self):
        """One row per (layer, language): mean mass over prompts and its CI."""
        pd = pandas()
        return pd.DataFrame(
            [
                {
                    "layer": layer,
                    "language": language,
                    "mean": float(self.mean[i, j]),
                    "lower": float(self.lower[i, j]),
                    "upper": float(self.upper[i, j]),
                    "n": self.mass.shape[1],
                }
                for i, layer in enumerate(self.layers)
                for j, language in enumerate(self.languages)
            ]
        )


def _prompt_count(prompts) -> int:
    if isinstance(prompts, str):
        return 1
    if isinstance(prompts, Tensor):
        return 1 if prompts.dim() == 1 else prompts.shape[0]
    return len(prompts)


def _answer_ids(model, answers: Mapping[str, Sequence[Answer]], n: int) -> Tensor:
    """[batch, language, answer] ids padded with -1; checks sizes and overlaps."""
    if not answers:
        raise MechscopeError("answers is empty: give {language: [answer tokens per prompt]}")
    sets: list[list[list[int]]] = [[] for _ in range(n)]
    for language, per_prompt in answers.items():
        per_prompt = [per_prompt] if isinstance(per_prompt, (str, int)) and n == 1 else list(per_prompt)
        if len(per_prompt) != n:
            raise MechscopeError(
                f"answers[{language!r}] has {len(per_prompt)} entries for {n} prompts: give one "
                "token (or set of tokens) per prompt"
            )
        for b, answer in enumerate(per_prompt):
            ids = sorted(set(token_ids(model, answer, f"answer for {language!r}")))
            if not ids:
                raise MechscopeError(f"answers[{language!r}][{b}] is empty: give at least one token")
            sets[b].append(ids)
    for b, row in enumerate(sets):
        seen: dict[int, int] = {}
        for li, ids in enumerate(row):
            for t in ids:
                if t in seen:
                    langs = list(answers)
                    raise MechscopeError(
                        f"prompt {b}: token {decode(model, t)!r} answers both {langs[seen[t]]!r} and "
                        f"{langs[li]!r}; the languages' masses must not overlap: drop this prompt"
                    )
                seen[t] = li
    width = max(len(ids) for row in sets for ids in row)
    out = torch.full((n, len(answers), width), -1, dtype=torch.long)
    for b, row in enumerate(sets):
        for li, ids in enumerate(row):
            out[b, li, : len(ids)] = torch.tensor(ids)
    return out


def _interval(mass: Tensor, confidence: float) -> tuple[Tensor, Tensor, Tensor]:
    """Mean over prompts and a Student-t interval (the mean itself for a single prompt)."""
    mean = mass.mean(1)
    n = mass.shape[1]
    if n < 2:
        return mean, mean.clone(), mean.clone()
    from scipy import stats

    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * mass.std(1) / n**0.5
    return mean, (mean - half).clamp(min=0), (mean + half).clamp(max=1)


def latent_language(
    model,
    prompts,
    answers: Mapping[str, Sequence[Answer]],
    *,
    position: int = -1,
    translator: C.Translator | None = None,
    include_mid: bool = False,
    layers: Sequence[int] | int | None = None,
    confidence: float = 0.95,
    batch_size: int | None = None,
) -> LatentLanguage:
    """Per-layer probability mass of each language's answer tokens at `position`.

    answers: {language: one entry per prompt}, each entry a token (one token, or an id)
    or a list of tokens whose probabilities are summed. A token may answer only one
    language per prompt (otherwise the masses would overlap). translator, include_mid,
    layers and batch_size as in `logit_lens`; confidence: level of the interval.
    """
    require_lm_head(model, "latent-language analysis")
    if not 0 < confidence < 1:
        raise MechscopeError(f"confidence must be between 0 and 1, got {confidence}")
    if isinstance(position, bool) or not isinstance(position, int):
        raise MechscopeError(f"position must be one integer (negative counts from the end), got {position!r}")
    ids = _answer_ids(model, answers, _prompt_count(prompts))
    chosen = C.streams(model, include_mid=include_mid, layers=layers, with_translator=translator is not None)
    run = C.record(model, prompts, [s.site for s in chosen], [position], batch_size)
    stack = torch.stack([C.translated(model, run, s, translator)[:, 0] for s in chosen])  # [layer, batch, d_model]
    n_streams, batch, d_model = stack.shape
    mass = torch.empty(n_streams * batch, ids.shape[1])
    entropy = torch.empty(n_streams * batch)
    valid = ids >= 0
    for start, logp in C.chunked_logprobs(model, stack.reshape(-1, d_model), None):
        rows = torch.arange(start, start + len(logp)) % batch
        probs = logp.exp().cpu()
        picked = probs.gather(1, ids[rows].clamp(min=0).flatten(1)).view(len(rows), *ids.shape[1:])
        mass[start : start + len(logp)] = (picked * valid[rows]).sum(-1)
        entropy[start : start + len(logp)] = -(probs * logp.cpu()).nansum(-1)
    mass, entropy = mass.view(n_streams, batch, -1), entropy.view(n_streams, batch)
    mean, lower, upper = _interval(mass, confidence)
    return LatentLanguage(
        model_name=model.name,
        layers=[s.label for s in chosen],
        sites=[s.site for s in chosen],
        languages=list(answers),
        mass=mass,
        entropy=entropy,
        mean=mean,
        lower=lower,
        upper=upper,
        answer_ids=ids,
        confidence=confidence,
        position=position,
        translator="identity" if translator is None else type(translator).__name__,
    )
