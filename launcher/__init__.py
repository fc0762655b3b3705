"""Cluster launch for gptscale (submitit executors, Checkpointable jobs, job arrays).

The launcher's commands arrive with the cluster-launch work; this package is installed alongside
``gptscale`` so that ``python -m launcher`` resolves on every node once they do.
"""
