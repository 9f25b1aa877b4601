"""TokenArrays: the penalties' token arrays, kept between steps, must always equal the lists."""

from __future__ import annotations

import numpy as np

from ladle.engine.sampling.token_arrays import TokenArrays


def check(arrays: TokenArrays, tokens, mutable: bool = True) -> None:
    np.testing.assert_array_equal(
        arrays.get(tokens, mutable=mutable), np.asarray(list(tokens), dtype=np.int64)
    )


def test_output_lists_any_edit_is_seen() -> None:
    arrays = TokenArrays()
    output = [5, 6, 7]
    check(arrays, output)
    for edit in (
        lambda o: o.append(9),  # the usual step
        lambda o: o.extend([1, 2, 3]),
        lambda o: o.__setitem__(-1, 40),  # the newest token replaced
        lambda o: o.__setitem__(0, 41),  # an old one replaced
        lambda o: o.__delitem__(slice(-2, None)),  # rewound
        lambda o: (o.__delitem__(slice(-2, None)), o.extend([7, 8, 9])),  # rewound, then longer than before
        lambda o: o.clear(),
        lambda o: o.extend(range(100)),
    ):
        edit(output)
        check(arrays, output)
        arrays.end_step()


def test_prompt_lists_and_tuples_are_converted_once() -> None:
    arrays = TokenArrays()
    prompt = list(range(1000))
    first = arrays.get(prompt, mutable=False)
    arrays.end_step()
    assert arrays.get(prompt, mutable=False) is first  # not converted again
    frozen = tuple(range(10))
    assert arrays.get(frozen) is arrays.get(frozen)
    prompt2 = list(prompt)  # a new list for a new prompt: converted, even with equal contents
    assert arrays.get(prompt2, mutable=False) is not first


def test_unused_lists_are_forgotten() -> None:
    arrays = TokenArrays()
    a, b = [1, 2], [3, 4]
    arrays.get(a)
    arrays.get(b)
    arrays.end_step()
    arrays.get(a)
    arrays.end_step()
    arrays.end_step()
    assert arrays._kept == {} and arrays._used == {}
