"""PCA visualisation of dense DINOv3 features (the "rainbow" pictures of the official ``notebooks/pca.ipynb``).

Recipe (as in the notebook), with one substitution:

1. last-layer patch features, normed (``get_intermediate_layers(norm=True)``), at a high resolution (768 px in the
   notebook);
2. a foreground mask. The notebook uses a trained linear foreground classifier, which is not distributed; here the
   mask is the sign of the **first principal component** of all patches (the side that touches the image border
   less is the foreground), smoothed with a 3x3 median filter. It is optional (``mask=False``);
3. PCA with 3 components and whitening, fitted on the foreground patches (all patches without a mask);
4. colours ``sigmoid(2 * projection)``, background set to black;
5. the ``h x w`` colour grid upsampled (nearest) to the input size and drawn beside the input.

numpy and Pillow; no scikit-learn, and no torch unless the caller passes torch tensors (results then come back as
tensors) or asks for bilinear upsampling. :mod:`.solver` says how the components are solved for and the sign rule
(scikit-learn's: the largest loading of each component is positive) that makes pictures reproducible;
:mod:`.pictures` draws them and :mod:`.png` writes the files; :mod:`.files` reads ``dinov3 extract`` outputs (feature
files and shard folders) without torch, and :mod:`.panels` decodes and resizes their source images as torch would,
bit for bit.
"""

from __future__ import annotations

from .pictures import (
    CAPTION_HEIGHT,
    PNG_OPTIONS,
    RANDOM_WEIGHTS_NOTE,
    caption_strip,
    compose_picture,
    compose_picture_array,
    compose_rows,
    missing_input_panel,
    render_row,
    render_row_array,
    save_png,
)
from .solver import PCAFit, fit_pca, foreground_mask, pca_colors

__all__ = [
    "CAPTION_HEIGHT",
    "PNG_OPTIONS",
    "RANDOM_WEIGHTS_NOTE",
    "PCAFit",
    "caption_strip",
    "compose_picture",
    "compose_picture_array",
    "compose_rows",
    "fit_pca",
    "foreground_mask",
    "missing_input_panel",
    "pca_colors",
    "render_row",
    "render_row_array",
    "save_png",
]
