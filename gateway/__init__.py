"""Monitoring gateway for smart complete communities."""

from pathlib import Path

__version__ = "0.1.0"

# Data folders shipped beside the package in a source checkout.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
