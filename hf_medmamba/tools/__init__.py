"""Tooling around the models that is not Hub remote code (it may use MONAI, pydicom and other optional packages)."""
