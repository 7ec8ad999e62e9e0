"""k8s-job-dispatcher: run a container as a Kubernetes Job from a RabbitMQ message.

A task message (JSON) from RabbitMQ becomes one Kubernetes Job; its logs and exit code, or an
error, go back as one JSON response. See ``docs/`` and the README for the contract.
"""

__version__ = "0.1.0"
