"""Baselines behind the MIST interface: one file per method, registered in mist_core.registry."""
