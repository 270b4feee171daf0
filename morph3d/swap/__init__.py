"""The swap job: options and work-folder caches, the clip and source fits, the face renderer
and identity transfer, the stage driver, templates (clips fitted once) and batches."""
