"""Backbones, registered in ``manager.BACKBONES``."""
