"""Procedural synthetic white-blood-cell images in three domains (no downloads; pure NumPy + Pillow).

Cell model (morphology.py): a cytoplasm body and a nucleus built from signed-distance shapes per class (round,
kidney, C/U band, 2-5 filament-joined lobes, folded, irregular, smudged), sized in micrometres, with chromatin
texture, nucleoli, cytoplasm stain load, vacuoles and granules; red cells and platelets around it
(background.py). Everything is drawn as optical density and photographed (stains.py).
Domain shifts (generator.py): resolution and image size (13.8 / 10 / 11.52 px/um), class proportions of the real
datasets (absent classes absent), stain palette and its within-domain spread, illumination, focus, sensor noise
and JPEG compression. See generator.py for the API; every cell is a pure function of (domain, label, index, seed).
"""

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
