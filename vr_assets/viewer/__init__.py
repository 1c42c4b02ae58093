"""The dataset viewer: look at each video with its captions and QA items, and review the items."""
