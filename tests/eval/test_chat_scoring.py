"""Scoring chat replies: clean (to the user, short, no sentence twice), "I don't know"."""

from __future__ import annotations

from memlm.eval.chat import clean_chat_reply, repeats_sentence, says_unknown, turn_ok, well_formed


def test_a_looping_reply_is_not_clean_even_with_the_answer():
    assert clean_chat_reply("You drive a green Volvo.", "Volvo")
    assert not clean_chat_reply("You drive a green Volvo. You drive a green Volvo.", "Volvo")
    assert repeats_sentence("You drive a Volvo! you drive a volvo.")
    assert not repeats_sentence("You drive a Volvo. It is green.")


def test_long_third_person_or_hedged_replies_are_not_clean():
    assert not clean_chat_reply(" ".join(["word"] * 41) + " Volvo", "Volvo")
    assert well_formed(" ".join(["word"] * 40))
    assert not clean_chat_reply("The user drives a Volvo.", "Volvo")
    assert not clean_chat_reply("I don't know, maybe a Volvo?", "Volvo")
    assert not clean_chat_reply("I drive a Volvo.", "Volvo")  # the user's fact claimed as the model's


def test_i_dont_know_in_its_usual_forms():
    for text in ("I don't know your brother's name.", "You haven't told me that.", "Sorry, I do not know.",
                 "You never mentioned it."):
        assert says_unknown(text), text
    assert not says_unknown("Your brother is called Tom.")


def test_turn_ok_per_kind():
    assert turn_ok("answer", "Your dog is called Rollo.", "Rollo")
    assert not turn_ok("answer", "I don't know. Your dog is Rollo?", "Rollo")
    assert turn_ok("unknown", "I don't know — you haven't told me.")
    assert not turn_ok("unknown", "Your brother is Tom.")
    assert turn_ok("tell", "Got it!") and not turn_ok("tell", "")
