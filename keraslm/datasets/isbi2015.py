"""ISBI 2015 cephalometric X-ray landmarks (Wang et al., Medical Image Analysis 31, 2016).

Reads the layout of the challenge's training split as distributed with keraslm's shared data:
`<root>/images/NNN.jpg` (1935 x 2400 pixels, 0.1 mm spacing, not stored in the files) and
`<root>/landmarks.csv` with columns `image,<name>_x,<name>_y` for 19 landmarks in pixel
coordinates (x = column, y = row, origin at the centre of the top-left pixel).
"""
import os

from keraslm.data import from_csv
from keraslm.errors import DatasetError

ISBI2015_SPACING_MM = 0.1
ISBI2015_LANDMARKS = (
    "sella",
    "nasion",
    "orbitale",
    "porion",
    "subspinale",
    "supramentale",
    "pogonion",
    "menton",
    "gnathion",
    "gonion",
    "lower_incisal_incision",
    "upper_incisal_incision",
    "upper_lip",
    "lower_lip",
    "subnasale",
    "soft_tissue_pogonion",
    "posterior_nasal_spine",
    "anterior_nasal_spine",
    "articulare",
)


def isbi2015(root, landmarks_file="landmarks.csv"):
    """Loads the ISBI 2015 cephalometric dataset folder as a `LandmarkDataset`.

    Args:
        root: str. Folder holding `landmarks.csv` and `images/`.
        landmarks_file: str. The landmark table in `root`: "landmarks.csv" (the senior doctor's,
            the challenge's ground truth) or "landmarks_junior.csv" (the second doctor's).

    Returns:
        LandmarkDataset named "isbi2015": records with ids "001", "002", ..., 19 landmarks in
        physical mm (pixel index x 0.1 mm), images read with 0.1 mm spacing.

    Raises:
        DatasetError: the folder or CSV is missing, images are missing (all listed), or the
            landmark columns are not the 19 ISBI 2015 landmarks.
    """
    root = os.fspath(root)
    csv_path = os.path.join(root, landmarks_file)
    if not os.path.isfile(csv_path):
        raise DatasetError(f"{root}: not an ISBI 2015 folder (no {landmarks_file})")
    dataset = from_csv(
        csv_path, image_root=root, units="index", spacing=ISBI2015_SPACING_MM, name="isbi2015"
    )
    if dataset.landmark_names != ISBI2015_LANDMARKS:
        raise DatasetError(
            f"{csv_path}: landmark columns {list(dataset.landmark_names)} are not the 19 ISBI 2015 "
            f"landmarks {list(ISBI2015_LANDMARKS)}"
        )
    return dataset
