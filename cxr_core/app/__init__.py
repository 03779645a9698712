"""What users run outside the DAG: ``cxr predict`` and the Gradio demo."""
