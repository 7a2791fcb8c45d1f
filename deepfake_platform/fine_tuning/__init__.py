"""Fine-tuning on production feedback, the parts that need no Ray, one job a module:

- `feedback_split`: the usable corrections of a feedback folder, split by content hash into images the new
  model trains on and images held back to judge it;
- `combined_data`: the data root the new model trains on (the original splits plus the feedback's crops);
- `judging`: how a model answers the held-back feedback and the original validation and test splits;
- `decision`: the rule that promotes the new model or keeps the original, and the sentence that says why;
- `report`: runs/<run>/FINE_TUNE.md and fine_tune.json.

The run that ties them to Ray Train is `deepfake_platform.orchestration.fine_tune`.
"""
