"""Where samples come from: the SampleSource protocol and its implementations (bucket prefix, packed shards,
existing WebDataset shards, a local folder, memory); open_source(url) picks one."""

from hivedata.sources.base import CacheKey, SampleSource
from hivedata.sources.memory import MemorySource
from hivedata.sources.read_plan import ReadPlan, Span
from hivedata.sources.resolve import SourceOptions, open_source

__all__ = ["CacheKey", "MemorySource", "ReadPlan", "SampleSource", "SourceOptions", "Span", "open_source"]
