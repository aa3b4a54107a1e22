"""Programs that write prepared datasets (`mpii`, `coco`, through `shards`), write descriptions
with an LLM (`describe_with_llm`) and draw what training sees (`visualize`)."""
