"""Loss functions of wbcdg_jax: pure functions of JAX arrays (jit / grad / vmap safe, static shapes).

See REFERENCE.md section 1 for the definitions. Nothing here depends on configs, models or optimizers, except the
small Flax `DomainDiscriminator` module used by DANN/CDANN.
"""

from wbcdg_jax.losses.boda import boda_loss, masked_logsumexp, pair_squared_distances
from wbcdg_jax.losses.boda_stats import (
    BodaStats,
    add_moments,
    counts_from_labels,
    init_boda_stats,
    ledoit_wolf_shrinkage,
    pair_mean_and_covariance,
    pair_moments,
    shrunk_covariance,
    shrunk_precision,
    update_boda_stats,
)
from wbcdg_jax.losses.ce import cross_entropy, per_sample_cross_entropy
from wbcdg_jax.losses.coral import coral_penalty
from wbcdg_jax.losses.dann import (
    DomainDiscriminator,
    cdann_class_weights,
    domain_adversarial_loss,
    ganin_lambda,
    gradient_reversal,
)
from wbcdg_jax.losses.mmd import DOMAINBED_GAMMAS, gaussian_kernel_matrix, mmd_penalty

__all__ = [
    "BodaStats",
    "DOMAINBED_GAMMAS",
    "DomainDiscriminator",
    "add_moments",
    "boda_loss",
    "cdann_class_weights",
    "coral_penalty",
    "counts_from_labels",
    "cross_entropy",
    "domain_adversarial_loss",
    "gaussian_kernel_matrix",
    "ganin_lambda",
    "gradient_reversal",
    "init_boda_stats",
    "ledoit_wolf_shrinkage",
    "masked_logsumexp",
    "mmd_penalty",
    "pair_mean_and_covariance",
    "pair_moments",
    "pair_squared_distances",
    "per_sample_cross_entropy",
    "shrunk_covariance",
    "shrunk_precision",
    "update_boda_stats",
]
