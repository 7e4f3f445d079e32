"""Store settings (``editstore config``), kept in the ``meta`` table under ``config.<key>``.

| key | values | default |
|---|---|---|
| ``checkout.compose`` | ``sequential`` or ``batched`` | ``sequential`` |
| ``checkout.lambda_e`` | EMMET's λ_e (≥ 0) for re-solved groups of ROME edits: 0 keeps every edit an equality constraint; > 0 softens them, as a long history needs once its keys outnumber their directions | 0 |
| ``checkout.targets`` | ``rebased`` (a re-solve writes each edit's residual δ onto the value its key has on the weight solved on) or ``stored`` (the target each edit computed on its own version, which carries what the edits before it wrote onto its key) | ``rebased`` |
| ``cache.max_bytes`` | bytes the composed-parameter cache may hold (0 turns it off) | 4 GiB |
| ``conflicts.backend`` | ``model`` (the base's hidden states) or ``sentence-transformers:PATH`` | ``model`` |
| ``conflicts.relation_threshold`` | relation cosine from which same-subject edits are the same fact | 0.55 |
| ``conflicts.semantic_threshold`` | embedding cosine from which a neighbour is a possible conflict | 0.85 |
| ``conflicts.interference_threshold`` | whitened-key cosine from which two edits share a slot | 0.8 |
| ``conflicts.flat_max`` | vectors up to which the conflict index is exact (flat), IVF above | 20000 |
| ``remote.endpoint_url`` | the S3 endpoint of the store's ``s3://`` remotes (MinIO, SeaweedFS, Ceph...), when ``$AWS_ENDPOINT_URL`` and the AWS profile set none; empty: AWS | (empty) |
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import ConfigError

COMPOSE_MODES = ("sequential", "batched")
TARGET_MODES = ("rebased", "stored")


def _compose(value: str) -> str:
    if value not in COMPOSE_MODES:
        raise ConfigError(f"checkout.compose takes {' or '.join(COMPOSE_MODES)}, not {value!r}")
    return value


def _targets(value: str) -> str:
    if value not in TARGET_MODES:
        raise ConfigError(f"checkout.targets takes {' or '.join(TARGET_MODES)}, not {value!r}")
    return value


def _number(cast: Callable[[str], float], low: float, high: float, what: str) -> Callable[[str], str]:
    """A validator of numbers ``cast`` can read, in [low, high]."""

    def check(value: str) -> str:
        try:
            x = cast(value)
        except ValueError:
            x = None
        if x is None or not low <= x <= high:
            raise ConfigError(f"this setting takes {what}, not {value!r}")
        return str(x)

    return check


def _endpoint(value: str) -> str:
    if value and not (value.startswith(("http://", "https://")) and len(value.split("://", 1)[1]) > 0):
        raise ConfigError(f"remote.endpoint_url takes an http:// or https:// URL (or nothing), not {value!r}")
    return value


def _backend(value: str) -> str:
    if value != "model" and not (value.startswith("sentence-transformers:") and value.split(":", 1)[1]):
        raise ConfigError(f"conflicts.backend takes model or sentence-transformers:PATH, not {value!r}")
    return value


_size = _number(int, 0, 2**63 - 1, "a whole number from 0 to 2^63 - 1")
_cosine = _number(float, -1.0, 1.0, "a number in [-1, 1]")
_non_negative = _number(float, 0.0, 1e12, "a number from 0 to 1e12")


SETTINGS: dict[str, tuple[str, Callable[[str], str]]] = {
    "checkout.compose": ("sequential", _compose),
    "checkout.lambda_e": ("0.0", _non_negative),
    "checkout.targets": ("rebased", _targets),
    "cache.max_bytes": (str(4 * 2**30), _size),
    "conflicts.backend": ("model", _backend),
    "conflicts.relation_threshold": ("0.55", _cosine),
    "conflicts.semantic_threshold": ("0.85", _cosine),
    "conflicts.interference_threshold": ("0.8", _cosine),
    "conflicts.flat_max": ("20000", _size),
    "remote.endpoint_url": ("", _endpoint),
}


def _known(key: str) -> tuple[str, Callable[[str], str]]:
    if key not in SETTINGS:
        raise ConfigError(f"unknown setting {key!r}; known: {', '.join(SETTINGS)}")
    return SETTINGS[key]


def check_setting(key: str, value: str) -> str:
    """The normalised value; :class:`ConfigError` for an unknown key or a bad value."""
    return _known(key)[1](value)


def default(key: str) -> str:
    """The value ``key`` has when the store does not set it."""
    return _known(key)[0]
