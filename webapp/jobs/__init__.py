"""Jobs: the persisted requests that servings run, their API, and their websocket."""
