"""Prediction: from an image file to landmarks in millimetres, one way for every user.

- `keraslm.prediction.graph`: the prediction graph (`image_to_landmarks`), the one
  implementation that `keraslm.predict`, the SavedModel signatures, TF Serving and a training
  run's final validation all run.
- `keraslm.prediction.detector`: `LandmarkDetector`, networks + `keraslm.spec.DetectorSpec` as
  one Keras object (`model.keras`).
- `keraslm.prediction.predictors`: `Predictor`, `DetectorPredictor`, `SavedModelPredictor`,
  `load_predictor`.
- `keraslm.prediction.api`: `predict`, `Prediction`, `write_predictions`.
"""
from keraslm.prediction.api import (
    EXPECTED_ERROR_FILE,
    FLAG_MM,
    MARKUPS_FOLDER,
    Prediction,
    check_plain_image_spacing,
    check_prediction_folder,
    input_image_ids,
    load_input_image,
    predict,
    write_predictions,
)
from keraslm.prediction.detector import LandmarkDetector, combine_detectors, load_detector
from keraslm.prediction.graph import decode_image_bytes, image_to_landmarks, refine_function
from keraslm.prediction.predictors import (
    DetectorPredictor,
    Predictor,
    SavedModelPredictor,
    load_model,
    load_predictor,
    saved_model_folder,
    saved_model_versions,
)

__all__ = [
    "DetectorPredictor", "EXPECTED_ERROR_FILE", "FLAG_MM", "LandmarkDetector", "MARKUPS_FOLDER",
    "Prediction", "Predictor", "SavedModelPredictor", "check_plain_image_spacing",
    "check_prediction_folder", "combine_detectors", "decode_image_bytes", "image_to_landmarks", "input_image_ids",
    "load_detector", "load_input_image", "load_model", "load_predictor", "predict",
    "refine_function", "saved_model_folder", "saved_model_versions", "write_predictions",
]
