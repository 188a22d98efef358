"""Procedural synthetic white-blood-cell images in three domains (see generator.py for the model)."""

from data_pipelines.synthetic_wbc.generator import (
    DOMAIN_SPECS,
    DOMAINS,
    DomainSpec,
    SyntheticCell,
    domain_class_counts,
    generate_cell,
    generate_cell_with_masks,
    generate_domain,
)

__all__ = [
    "DOMAINS", "DOMAIN_SPECS", "DomainSpec", "SyntheticCell", "domain_class_counts", "generate_cell",
    "generate_cell_with_masks", "generate_domain",
]
