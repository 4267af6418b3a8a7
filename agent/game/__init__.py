"""Go rules, positions and KataGo's V7 NN input features.

Public API (import from the submodules; everything below is stable for consumers)::

    from agent.game.rules import Rules, parse_rules, supported_rules
        parse_rules("japanese") / parse_rules({"ko": "SIMPLE", ...}) / parse_rules('{"ko":...}')
            -> frozen Rules(ko, scoring, tax, suicide, has_button, white_handicap_bonus,
               friendly_pass_ok, komi); RulesError with KataGo's messages.
        Rules.to_json() -> kata-get-rules object (alphabetical keys, no komi by default)
        supported_rules(r) -> (rules usable by nets v>=7, warnings)

    from agent.game.coords import PASS_LOC, NULL_LOC, Geometry, gtp_to_loc, loc_to_gtp, parse_gtp_xy
        Moves are ints: ``loc`` in KataGo's padded layout (stride = x_size + 1), PASS_LOC = 1.
        Geometry(x, y).loc(x, y) / .xy(loc) / .to_gtp(loc) / .from_gtp("D4") / .all_locs()
        .loc_to_pos(loc, nn_x, nn_y) / .pos_to_loc(pos, nn_x, nn_y): NN policy index (pass = nn_x*nn_y)
        CoordinateError("Could not parse board location: ...") on bad input.

    from agent.game.board import Board, BLACK, WHITE, EMPTY, opp
        Board(x, y); .play(loc, pla) -> Undo; .undo(u); .copy(); .color[loc]; .ko_loc;
        .hash (64-bit Zobrist of stones + size); Board.from_rows([...ASCII...]); .to_rows()

    from agent.game.state import GameState
        state.pla (side to move), state.board, state.rules, state.moves [(loc, pla)]
        state.copy()                 cheap clone (boards are shared copy-on-write)
        state.play(loc)              side to move plays (assumed legal; fast path for search)
        state.play_move(loc, pla)    analysis-engine replay semantics (clear on colour change,
                                     tolerant legality, IllegalMoveError "Illegal move N: LOC")
        state.is_legal(loc), state.legal_moves(include_pass=True), state.superko_banned()
        state.is_over (two passes ended the game / normal phase), state.is_game_finished
        state.pass_would_end_game(), state.self_komi(pla)
        state.situation_hash() (board + side to move), state.nn_hash(conservative_pass=...,
        max_history=...) (everything the V7 inputs depend on; process-local 64-bit key)

    from agent.game.position import position_from_query, replay_query, parse_player
        position_from_query(moves, initial_stones=None, initial_player=None, rules=...,
                            komi=None, board_x=19, board_y=19) -> GameState
        replay_query(...) -> [GameState after 0..len(moves) moves]   (analyzeTurns)
        state_from_ascii("X.O\\n...", pla, rules) -> GameState (tests, debugging)

    from agent.game.features import encode_v7, legal_mask
        encode_v7(state, symmetry=0, nn_x=19, nn_y=19, conservative_pass=False, max_history=1000,
                  enable_passing_hacks=False, playout_doubling_advantage=0.0,
                  draw_equivalent_wins_for_white=0.5, pass_alive_suicide=False)
            -> (spatial float32 [22, nn_y, nn_x], global float32 [19])
        kata-raw-nn: defaults. Analysis-engine root: max_history=0, conservative_pass=True.
        legal_mask(state, nn_x, nn_y) -> bool [nn_x*nn_y + 1] (pass last)

    from agent.game.symmetry import apply_symmetry, invert_symmetry_map, invert_symmetry_policy
        apply_symmetry(planes[..., H, W], s) for inputs; invert_symmetry_map(map, s) for outputs.

    from agent.game.area import calculate_area, independent_life_area   (Benson, pass-alive)
    from agent.game.ladder import ladder_scan, ladder_captured
    from agent.game.sgf import parse_sgf, sgf_rules, state_from_sgf, write_sgf, SgfGame
        parse_sgf(text) -> SgfGame (main line; SZ incl. 13:9, KM, RU, HA, AB/AW/AE, PL, B/W,
        pass as [] or [tt]); state_from_sgf(game, num_moves=None) -> GameState; SgfError.

Benchmark: ``python -m agent.bench.features ../shared/reference`` (figures in docs/rules.md).
"""
