"""Model lineage audit: the report of a version (report) and its Markdown and JSON (render)."""
