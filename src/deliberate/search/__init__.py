"""Test-time search strategies, one file each, one class each: ``Strategy.run(problems, ctx) -> [SearchResult]``.

    from deliberate.search import SearchContext, SearchSettings, run_search
    ctx = SearchContext(backend, task, SearchSettings(n=16), verifier=get_verifier("prm:runs/prm", task=task))
    results = run_search("beam", problems, ctx)
"""

from deliberate.search.base import (
                                    STRATEGIES,
                                    Candidate,
                                    SearchContext,
                                    SearchResult,
                                    SearchSettings,
                                    Strategy,
                                    get_strategy,
                                    run_search,
                                    strategy_names,
)

__all__ = ["STRATEGIES", "Candidate", "SearchContext", "SearchResult", "SearchSettings", "Strategy",
           "get_strategy", "run_search", "strategy_names"]
