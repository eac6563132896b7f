"""`fournil bake`: the orchestrator above every stage (pipeline.py), its resource plan (plan.py) and its
report (report.py). The one package allowed to import all stages."""
