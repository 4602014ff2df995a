"""`LoadOptions`: how a SavedModel is prepared and its session configured.

Which model is meant (path, tag set, signature) is not an option: those name the model and
are arguments of `beam_v1.load` / `prepare` beside the options. The options say how to load
it: thread pools, op libraries and modules to register first, rewrites of lost ops, and the
graph-op audit. Construction validates every field (one home for it); `LoadOptions.of`
builds one from keywords and names the known ones when a keyword is unknown.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any


def _names(value: str | Iterable[str] | None, field: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    try:
        names = tuple(value)
    except TypeError:
        raise TypeError(f"{field} must be a list of strings, not {value!r}") from None
    bad = [v for v in names if not isinstance(v, str)]
    if bad:
        raise TypeError(f"{field} must be a list of strings; got {bad!r}")
    return names


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoadOptions:
    """How a model is loaded; every field is also a keyword of `beam_v1.load`.

    Attributes:
      intra_op_threads: threads of one op's work (0: TensorFlow's default).
      inter_op_threads: ops run at once (0: TensorFlow's default).
      op_libraries: custom-op libraries (`tf.load_op_library`) loaded before the op check.
      import_modules: modules imported before the op check (e.g. `tensorflow_text`).
      rewrites: replace ops this TensorFlow lost (`beam_v1.model.rewrites`).
      allow_unsafe_ops: skip the refusal of the graph-op audit (`beam_v1.model.audit`, SPEC §7).

    Raises:
      ValueError: a negative thread count.
      TypeError: a field of the wrong type.
    """

    intra_op_threads: int = 0
    inter_op_threads: int = 0
    op_libraries: tuple[str, ...] = ()
    import_modules: tuple[str, ...] = ()
    rewrites: bool = True
    allow_unsafe_ops: bool = False

    def __post_init__(self) -> None:
        for field in ("intra_op_threads", "inter_op_threads"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{field} must be an int, not {value!r}")
            if value < 0:
                raise ValueError(f"{field} must be 0 (TensorFlow's default) or more, not {value}")
        # frozen: normalise through object.__setattr__ (lists -> tuples, so options hash)
        for field in ("op_libraries", "import_modules"):
            object.__setattr__(self, field, _names(getattr(self, field), field))
        for field in ("rewrites", "allow_unsafe_ops"):
            object.__setattr__(self, field, bool(getattr(self, field)))

    @classmethod
    def known(cls) -> tuple[str, ...]:
        """The option names, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def of(
        cls, options: LoadOptions | Mapping[str, Any] | None = None, **kwargs: Any
    ) -> LoadOptions:
        """A LoadOptions from an instance, a mapping and/or keywords (keywords win).

        Raises:
          TypeError: an unknown option, naming the known ones.
        """
        if isinstance(options, LoadOptions):
            if not kwargs:
                return options
            options = dataclasses.asdict(options)
        merged = {**dict(options or {}), **kwargs}
        unknown = sorted(set(merged) - set(cls.known()))
        if unknown:
            raise TypeError(
                f"Unknown load option(s) {unknown}; the options are {sorted(cls.known())}."
            )
        return cls(**merged)

    def as_kwargs(self) -> dict[str, Any]:
        """The options that differ from the defaults, as `beam_v1.load` keywords."""
        default = LoadOptions()
        return {
            name: getattr(self, name)
            for name in self.known()
            if getattr(self, name) != getattr(default, name)
        }

    def session_config(self):
        """The `tf.compat.v1.ConfigProto` of a session loaded with these options."""
        # deferred: importing config_pb2 starts TensorFlow; options are built without it
        from tensorflow.core.protobuf import config_pb2

        return config_pb2.ConfigProto(
            allow_soft_placement=True,
            intra_op_parallelism_threads=self.intra_op_threads,
            inter_op_parallelism_threads=self.inter_op_threads,
        )
