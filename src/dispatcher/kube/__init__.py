"""Everything that knows about Kubernetes: names and labels, the Job manifest, outcome rules.

This is the only package that may import the Kubernetes client. The pure modules here
(``conventions``, ``jobspec``, ``outcome``) work on plain JSON-able dicts and do not import it.
"""
