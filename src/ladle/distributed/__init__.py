"""Tensor parallelism: process groups and collectives (group.py), sharded layers (layers.py) and the plan that
turns a model built for one device into one rank's slice of it (sharding.py)."""
