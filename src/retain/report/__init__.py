"""Run records (result.json) and their renderings (Markdown, HTML, CSV, plots)."""
