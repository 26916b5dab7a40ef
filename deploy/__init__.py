"""Deployment helpers: shell scripts for real machines and a local launcher (``deploy.launch_local``)."""
