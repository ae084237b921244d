"""The one exception type for mistakes a user can make.

Anything that a user can cause (an unknown name, a bad value, a missing or corrupt file,
NaN in the data) raises :class:`UserError` with one message that says what was wrong and
what is accepted. The command line prints the message without a traceback and exits
with status 2.

:func:`did_you_mean` writes the "Accepted: ... Did you mean ...?" part of such a message;
:func:`closest_names` is its ranking (exact up to case, the same ignoring ``_`` and
``-``, well-known synonyms such as ``latent_dim`` / ``noise_dim`` / ``z_dim``, prefixes,
shared words, then edit distance).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


class UserError(ValueError):
    """A mistake in what the user asked for; the message says what is accepted."""


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the message names the step and the kept checkpoint."""


# Names people type for one setting, in other libraries or papers. Compared after
# _normalise (lower case, no "_", "-", "." or spaces), so "z_dim" and "zdim" are one entry.
SYNONYMS: tuple[frozenset[str], ...] = tuple(
    frozenset(group)
    for group in (
        {"latentdim", "noisedim", "zdim", "nz", "codedim", "codesize", "latentsize", "latent", "noise", "bottleneck"},
        {"lr", "learningrate", "lrrate", "stepsize", "eta0"},
        {"epochs", "epoch", "nepochs", "numepochs", "maxepochs"},
        {"batchsize", "bs", "batch", "minibatch", "minibatchsize"},
        {"hidden", "hiddendims", "hiddensizes", "hiddenunits", "hiddenlayers", "widths", "layers"},
        {"dsteps", "ncritic", "criticsteps", "discsteps"},
        {"gradclip", "clipgrad", "maxgradnorm", "gradientclipping", "clipnorm"},
        {"weightdecay", "wd", "l2"},
        {"activation", "act", "nonlinearity"},
        {"beta", "klweight"},
        {"iwaek", "importancesamples", "k"},
        {"seed", "randomseed", "rngseed"},
        {"device", "gpu", "cuda"},
        {"dlr", "discriminatorlr", "criticlr"},
        {"gpweight", "lambdagp", "gplambda"},
        {"maxsteps", "steps", "numsteps", "iterations", "iters"},
    )
)


def _normalise(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch not in "_-. ")


def _words(name: str) -> list[str]:
    return [w for w in name.lower().replace("-", "_").replace(".", "_").split("_") if w]


def _edit_distance(a: str, b: str) -> int:
    """Damerau-Levenshtein distance (adjacent transpositions count one: ``vea`` -> ``vae``)."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[-1]


def _similarity(a: str, b: str) -> float:
    """In [0, 1]: the better of difflib's ratio and 1 - edit distance / longer length."""
    import difflib

    if not a or not b:
        return 0.0
    ratio = difflib.SequenceMatcher(None, a, b).ratio()
    return max(ratio, 1.0 - _edit_distance(a, b) / max(len(a), len(b)))


def _synonyms(norm: str) -> frozenset[str]:
    return frozenset().union(*(g for g in SYNONYMS if norm in g))


def _tier(name: str, choice: str) -> int:
    """How surely ``choice`` is what was meant by ``name``: 7 (exact up to case) .. 0 (only
    the edit distance can tell)."""
    if name.lower() == choice.lower():
        return 7
    n, c = _normalise(name), _normalise(choice)
    if n == c:
        return 6  # batchsize -> batch_size, wgan_gp -> wgan-gp
    if c in _synonyms(n):
        return 5  # latent_dim -> noise_dim, learning_rate -> lr
    if len(n) >= 3 and len(c) >= 3 and (c.startswith(n) or n.startswith(c)):
        return 4  # epoch -> epochs
    words, cwords = _words(name), _words(choice)
    if c in words or n in cwords:
        return 3  # lr_rate -> lr, hidden -> d_hidden
    if set(words) & set(cwords) or any(c in _synonyms(w) for w in words):
        return 2  # a shared word: noise_std -> noise_dim
    if len(n) >= 4 and len(c) >= 4 and (n in c or c in n):
        return 1
    return 0


def closest_names(name: str, choices: Iterable[str], n: int = 3, cutoff: float = 0.6) -> list[str]:
    """The (at most ``n``) ``choices`` closest to ``name``, closest first.

    Ranked by how surely each is meant (see :func:`_tier`: exact up to case; equal ignoring
    ``_``/``-``; a well-known synonym from :data:`SYNONYMS`; a prefix; a word of the other;
    a shared word), then by spelling similarity (edit distance with transpositions, and
    difflib's ratio). A choice with none of those ties needs a similarity of ``cutoff``
    (``hiden`` -> ``hidden``, ``mnsit`` -> ``mnist``); an unrelated name gets ``[]``.
    """
    name = str(name)
    scored = []
    for choice in dict.fromkeys(str(c) for c in choices):
        tier = _tier(name, choice)
        sim = _similarity(_normalise(name), _normalise(choice))
        if tier == 0 and sim < cutoff:
            continue
        if tier == 2 and sim < 0.3:  # a shared word alone ("dim") is a weak tie
            continue
        scored.append((-tier, -sim, choice))
    return [c for _, _, c in sorted(scored)[:n]]


def did_you_mean(name: str, choices: Sequence[str] | Iterable[str]) -> str:
    """``"Accepted: a, b, c. Did you mean 'b'?"``: every accepted name, then the closest
    ones first (:func:`closest_names`); no question when none is close."""
    choices = [str(c) for c in choices]
    close = closest_names(str(name), choices)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"Accepted: {', '.join(sorted(choices))}.{hint}"
