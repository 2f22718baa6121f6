"""`fleetwarden demo`: the whole story on real parts, on loopback.

- :mod:`fleetwarden.demo.stack`: starts and stops what runs (control plane, Prometheus,
  Alertmanager, one simulator per example namespace, the operator), runs kubectl.
- :mod:`fleetwarden.demo.story`: the story (baseline, model update and rollback, runaway
  loop and kill switch, resume), its waits and its JSON summary.
"""
