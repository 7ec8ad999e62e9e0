"""Drives the local stack for the tests and the benchmarks alike: an installation's settings
(Instance), a broker client that publishes tasks and collects answers (Broker), worker processes
stopped by PID (Worker), kubectl and rabbitmqctl, bursts of tasks, a TCP proxy that cuts
connections, and the chart's alert rules and dashboard with Debian's Prometheus tools
(monitoring). It is not part of the package users install."""
