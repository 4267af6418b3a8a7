"""A game-playing move chooser over our own search (for matches such as ``verify --games``).

``SearchPlayer(net, post, visits=V)`` answers "which move now?" for a ``GameState``: a fresh
:class:`~agent.search.mcts.Search` with a fixed visit budget (no time limit, one search
thread, so the result depends on the network and the seed, not on the machine's load), and the
move with the highest play-selection value (visits with KataGo's LCB adjustment, like
``chosenMoveTemperature = 0``). Differences from the analysis defaults, as in KataGo's
``gtp.cfg``/match settings:

* ``wideRootNoise = 0`` (the analysis engine's root noise widens the search for analysis);
* the network sees the game's history (``ignorePreRootHistory = false``);
* the NN cache is kept between the moves of a game (positions repeat across consecutive
  searches) and emptied by :meth:`SearchPlayer.new_game`.

The evaluator randomises symmetries (seeded), so two games from one opening still differ.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from agent.backends.base import NeuralNet
from agent.game.state import GameState
from agent.network.model import PostProcessParams
from agent.search.evaluator import NNEvaluator
from agent.search.mcts import Search
from agent.search.params import SearchParams
from agent.search.position import SearchState
from agent.search.results import play_selection_values

PLAY_PARAMS = SearchParams(
    max_visits=16,
    num_threads=1,
    speculate=False,
    wide_root_noise=0.0,
    ignore_pre_root_history=False,
)


@dataclass(frozen=True)
class MoveChoice:
    """The chosen move and the search's view of it (mover's perspective)."""

    loc: int
    winrate: float  # 0..1, root value of the side to move
    lead: float  # points, side to move
    visits: int


class SearchPlayer:
    """Chooses moves with a fixed-visit search over ``net`` (module docstring)."""

    def __init__(
        self,
        net: NeuralNet,
        post: PostProcessParams,
        *,
        visits: int,
        seed: int = 0,
        params: SearchParams = PLAY_PARAMS,
    ) -> None:
        self.params = replace(params, max_visits=visits)
        self.evaluator = NNEvaluator(
            net, post, max_batch_size=1, randomize=True, seed=seed, buffer=net.info.board_x
        ).start()
        self._seed = seed
        self._searches = 0

    def new_game(self) -> None:
        """Empty the NN cache: a game must not reuse evaluations from the previous one (games of
        a match are then independent, and the second game of an opening pair gets no head start)."""
        self.evaluator.clear_cache()

    def choose(self, state: GameState) -> MoveChoice:
        self._searches += 1
        search = Search(
            self.evaluator,
            self.params,
            SearchState(state.copy()),
            seed=self._seed * 1_000_003 + self._searches,
        )
        search.run()
        root = search.root
        psv, _, _ = play_selection_values(search)
        k = int(np.argmax(psv)) if psv.any() else int(np.argmax(root.priors))
        index = int(root.moves[k])
        persp = root.sign  # +1 with White to move: the sums are White's view
        return MoveChoice(
            loc=root.state.loc_of(index),
            winrate=0.5 * (1.0 + persp * root.win_loss),
            lead=persp * root.lead,
            visits=root.visits,
        )

    def close(self) -> None:
        self.evaluator.close()
