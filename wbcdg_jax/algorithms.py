"""Which loss terms each algorithm adds to cross-entropy: a table, not a class hierarchy.

| algorithm        | terms                        | note                                                    |
| ---------------- | ---------------------------- | ------------------------------------------------------- |
| erm              | -                            |                                                         |
| coral            | coral                        | DomainBed CORAL                                          |
| mmd              | mmd                          | DomainBed Gaussian-kernel MMD                            |
| dann             | dann                         | gradient reversal + domain discriminator                |
| cdann            | dann (class-conditional)     | discriminator sees a class embedding, class-balanced    |
| boda             | coral + boda                 | the BoDA authors' total loss ("Ours")                   |
| boda_decoupled   | coral + boda, then stage 2   | "Ours+": classifier retrained with class-balanced data  |

`boda.metric='mahalanobis'` (configs/boda_mahalanobis.py) selects the Mahalanobis form of the BoDA term.
"""

from __future__ import annotations

import dataclasses

import ml_collections

ALGORITHMS: dict[str, frozenset[str]] = {
    "erm": frozenset(),
    "coral": frozenset({"coral"}),
    "mmd": frozenset({"mmd"}),
    "dann": frozenset({"dann"}),
    "cdann": frozenset({"dann", "conditional"}),
    "boda": frozenset({"coral", "boda"}),
    "boda_decoupled": frozenset({"coral", "boda", "decoupled"}),
}
# Terms that compare source domains with each other and are meaningless with one source domain.
MULTI_DOMAIN_TERMS = frozenset({"coral", "mmd", "dann", "boda"})


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """Static (hashable) description of the loss a train step computes; built once from the config.

  Weights of 0 switch a term off at trace time, so an unused term costs nothing.
  """

  num_domains: int
  num_classes: int
  total_steps: int
  coral_weight: float = 0.0
  mmd_weight: float = 0.0
  dann_weight: float = 0.0
  dann_conditional: bool = False
  dann_schedule: str = "ganin"
  dann_lambda: float = 1.0
  boda_weight: float = 0.0
  boda_nu: float = 0.5
  boda_temperature: float = 1.0
  boda_metric: str = "euclidean"
  boda_start_step: int = 0
  head_only: bool = False  # decoupled stage 2: encoder frozen, CE on the head alone


def terms_of(algorithm: str) -> frozenset[str]:
  if algorithm not in ALGORITHMS:
    raise ValueError(f"config.algorithm={algorithm!r} is not one of {sorted(ALGORITHMS)}")
  return ALGORITHMS[algorithm]


def loss_spec(config: ml_collections.ConfigDict, *, num_domains: int, num_classes: int,
              stage: int = 1) -> LossSpec:
  """Builds the LossSpec of `config.algorithm` for training stage 1, or the decoupled stage 2."""
  terms = terms_of(config.algorithm)
  if stage == 2:
    if "decoupled" not in terms:
      raise ValueError(f"stage 2 exists only for decoupled algorithms, not {config.algorithm!r}")
    return LossSpec(num_domains=num_domains, num_classes=num_classes, total_steps=config.decoupled.steps,
                    head_only=True)
  return LossSpec(
      num_domains=num_domains,
      num_classes=num_classes,
      total_steps=config.train.steps,
      coral_weight=float(config.coral.weight) if "coral" in terms else 0.0,
      mmd_weight=float(config.mmd.weight) if "mmd" in terms else 0.0,
      dann_weight=float(config.dann.weight) if "dann" in terms else 0.0,
      dann_conditional="conditional" in terms,
      dann_schedule=config.dann.schedule,
      dann_lambda=float(config.dann.lambda_),
      boda_weight=float(config.boda.weight) if "boda" in terms else 0.0,
      boda_nu=float(config.boda.nu),
      boda_temperature=float(config.boda.temperature),
      boda_metric=config.boda.metric,
      boda_start_step=int(config.boda.start_step),
  )
