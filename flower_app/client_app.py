"""The App's ClientApp: one node is one device of the run's seeded partition; LoRA at its group's depth."""

from hierfedlora.runtime.flower import make_client_app

app = make_client_app()
