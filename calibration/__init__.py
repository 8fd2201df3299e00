"""INT8 calibration (explicit Q/DQ) from a folder of images."""
