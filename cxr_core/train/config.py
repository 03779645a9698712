"""The training settings: one frozen record built from params.yaml, the single source of defaults."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cxr_core.models.registry import get_spec
from cxr_core.params import train_epochs
from cxr_core.runtime import Runtime


@dataclass(frozen=True)
class TrainConfig:
    """Every setting the loop uses: ``lr``, the ``train`` section and the run's seed (one of ``seeds``).

    ``lr`` is the model's own rate: params' ``lr`` times ``train.lr_scale`` of its family.

    ``data_source`` / ``label_file`` (from the raw manifest) go into every checkpoint, so a model
    trained on the phantom says so wherever it is used.
    """

    model: str
    image_size: int
    lr: float
    seed: int
    epochs: int
    batch_size: int
    eval_batch_size: int
    loss: str
    plateau_factor: float
    plateau_patience: int
    early_stop_patience: int
    warmup_epochs: int
    shuffle_labels: bool
    hflip_p: float
    rotate_p: float
    max_degrees: float
    pretrained: bool
    weights: str | None
    device: str
    amp: str
    channels_last: bool
    compile: bool
    data_source: str = "unknown"
    label_file: str = "unknown"

    @classmethod
    def from_params(
        cls,
        params: Mapping[str, Any],
        model: str,
        image_size: int,
        seed: int,
        *,
        data_source: str = "unknown",
        label_file: str = "unknown",
    ) -> TrainConfig:
        """Build from a validated params dict (``cxr_core.params.load_params``) for one training seed."""
        t = params["train"]
        return cls(
            model=model,
            image_size=int(image_size),
            lr=float(params["lr"]) * t["lr_scale"][get_spec(model).family],
            seed=int(seed),
            epochs=train_epochs(params, get_spec(model).family),
            batch_size=t["batch_size"],
            eval_batch_size=t["eval_batch_size"],
            loss=t["loss"],
            plateau_factor=t["plateau_factor"],
            plateau_patience=t["plateau_patience"],
            early_stop_patience=t["early_stop_patience"],
            warmup_epochs=t["warmup_epochs"],
            shuffle_labels=t["shuffle_labels"],
            hflip_p=t["augment"]["hflip_p"],
            rotate_p=t["augment"]["rotate_p"],
            max_degrees=t["augment"]["max_degrees"],
            pretrained=t["pretrained"],
            weights=t["weights"],
            device=t["device"],
            amp=t["amp"],
            channels_last=t["channels_last"],
            compile=t["compile"],
            data_source=data_source,
            label_file=label_file,
        )

    @property
    def augment(self) -> dict[str, float]:
        return {"hflip_p": self.hflip_p, "rotate_p": self.rotate_p, "max_degrees": self.max_degrees}

    def runtime(self, local_rank: int | None = None) -> Runtime:
        train = {"device": self.device, "amp": self.amp, "channels_last": self.channels_last}
        return Runtime.from_params(train, get_spec(self.model), local_rank=local_rank)


#: Settings a ``last.pt`` written under other values may be resumed across (``epochs``: a longer
#: run continues a shorter one exactly). ``device`` and ``channels_last`` are requests: the resume
#: key holds the runtime they resolve to, which does change the float results.
_RESUMABLE_ACROSS: frozenset[str] = frozenset(
    {"epochs", "eval_batch_size", "device", "compile", "channels_last"}
)
