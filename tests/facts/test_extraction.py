"""Rule-based fact extraction from chat messages: what is kept, how it is rephrased, its category."""

from __future__ import annotations

import pytest

from memlm.facts.extraction import (
    categorize,
    extract_facts,
    is_request,
    model_judge,
    second_person,
    split_sentences,
    third_person,
)


@pytest.mark.parametrize("message, facts", [
    ("Hi! My name is Ada. What's the weather like?", ["The user's name is Ada."]),
    ("I live in Lisbon and I love sardines.", ["The user lives in Lisbon and the user loves sardines."]),
    ("Remember that the meeting is on Friday.", ["The meeting is on Friday."]),
    ("We have two kids.", ["The user has two kids."]),
    ("I'm allergic to peanuts!", ["The user is allergic to peanuts!"]),
    ("ok", []), ("Thanks!", []), ("Do you like cats?", []), ("The sky is blue.", []),
])
def test_first_person_statements_are_kept_in_the_third_person(message, facts):
    assert [f.text for f in extract_facts(message)] == facts


def test_each_fact_keeps_the_users_own_sentence_and_a_category():
    (fact,) = extract_facts("Oh, my dog is called Biscuit.")
    assert fact.sentence == "Oh, my dog is called Biscuit."  # what retrieval matches questions against
    assert fact.category == "pet"
    assert [categorize(s) for s in ("I work as a nurse.", "My sister is Eva.", "I prefer tea.")] == [
        "work", "family", "preference"]


def test_a_judge_can_rescue_sentences_the_rules_miss():
    sentence = "Tuesdays are for chess club."
    assert extract_facts(sentence) == []
    assert [f.text for f in extract_facts(sentence, judge=lambda s: "chess" in s)] == [sentence]


def test_verbs_agree_with_the_third_person():
    assert third_person("I really enjoy hiking") == "The user really enjoys hiking."
    assert third_person("I go to the gym") == "The user goes to the gym."
    assert third_person("I study physics") == "The user studies physics."
    assert third_person("I can swim") == "The user can swim."
    assert split_sentences("One. Two!\nThree?") == ["One.", "Two!", "Three?"]


@pytest.mark.parametrize("sentence, expected", [
    ("I watch birds", "The user watches birds."), ("I fix bikes", "The user fixes bikes."),
    ("I buzz", "The user buzzes."), ("I echo", "The user echoes."), ("I wash cars", "The user washes cars."),
    ("I carry water", "The user carries water."), ("I play chess", "The user plays chess."),
    ("I have a boat", "The user has a boat."), ("I do yoga", "The user does yoga."),
    ("I never skip breakfast", "The user never skips breakfast."), ("I told Eva", "The user told Eva."),
    ("I walked home", "The user walked home."), ("I swims", "The user swims."),
    ("I will call", "The user will call."), ("I'm tired", "The user is tired."),
    ("My cat naps", "The user's cat naps."),
    ("we are happy!", "The user is happy!"), ("I ski", "The user skis."), ("I dry herbs", "The user dries herbs."),
    ("I can't swim", "The user can't swim."), ("I sing in a choir", "The user sings in a choir."),
    ("I bring cake", "The user brings cake."), ("i love tea", "The user loves tea."),
    ("me being late again", "The user being late again."),
])
def test_third_person_endings_follow_english_spelling(sentence, expected):
    assert third_person(sentence) == expected


@pytest.mark.parametrize("text, expected", [
    ("The user's dog is called Biscuit.", "Your dog is called Biscuit."),
    ("The user lives in Oslo.", "You live in Oslo."),
    ("The user is a nurse", "You are a nurse."),
    ("The user was born in Lima.", "You were born in Lima."),
    ("The user has two kids.", "You have two kids."),
    ("The user does not eat meat.", "You do not eat meat."),
    ("The user doesn't drive.", "You don't drive."),
    ("The user does yoga.", "You do yoga."),
    ("The user watches birds.", "You watch birds."), ("The user fixes bikes.", "You fix bikes."),
    ("The user buzzes.", "You buzz."), ("The user echoes.", "You echo."), ("The user kisses frogs.", "You kiss frogs."),
    ("The user carries water.", "You carry water."), ("The user plays chess.", "You play chess."),
    ("The user dies laughing.", "You die laughing."),  # not "dy": too short for a "-ies" verb
    ("The user really enjoys hiking.", "You really enjoy hiking."), ("The user walked home.", "You walked home."),
    ("The user can swim.", "You can swim."), ("The user told Eva.", "You told Eva."),
    ("The user is swimming?", "You are swimming?"), ("Bob lives in Oslo", "Bob lives in Oslo."),
    ("the user's cat naps!", "Your cat naps!"), ("The user washes cars.", "You wash cars."),
    ("The user fries eggs.", "You fry eggs."), ("The user ties knots.", "You tie knots."),
    ("The user always has lunch at noon.", "You always have lunch at noon."),
    ("The user never does that.", "You never do that."), ("The user usually is late", "You usually are late."),
    ("Bob told the user a story.", "Bob told you a story."), ("Eva called The User", "Eva called you."),
    ("", "."), ("The user as a child lived in Lima.", "You as a child lived in Lima."),
])
def test_a_stored_fact_is_addressed_to_the_user(text, expected):
    assert second_person(text) == expected


@pytest.mark.parametrize("spoken, expected", [
    ("Oh, my dog is called Biscuit.", "Your dog is called Biscuit."),
    ("Remember that I'm allergic to walnuts", "You're allergic to walnuts."),
    ("I am from Ghent and we've got three hives.", "You are from Ghent and you've got three hives."),
    ("I was born in Lima, my mother too, and I'd move back",
     "You were born in Lima, your mother too, and you'd move back."),
    ("Call me Noor; the bees are mine, I keep them myself!",
     "Call you Noor; the bees are yours, you keep them yourself!"),
    ("We're moving; our house is sold, ours no more. I'll miss it, tell us",
     "You're moving; your house is sold, yours no more. you'll miss it, tell you."),
    ("im done and I've eaten", "You're done and you've eaten."),
])
def test_the_users_own_sentence_is_turned_to_the_second_person(spoken, expected):
    assert second_person("ignored when spoken is given", spoken) == expected


@pytest.mark.parametrize("sentence, asks", [
    ("Tell me about my bees.", True), ("Please help me plan my trip", True), ("Can you book a table", True),
    ("Hey, could you check my spelling", True), ("I'd like you to draft a letter", True),
    ("Let me know when", True), ("So, summarize this", True), ("Summarise it", True), ("Look up Oslo", True),
    ("My sister lives in Tromso.", False), ("I told Eva.", False), ("Telling stories is my job.", False),
])
def test_requests_to_the_assistant_are_told_from_statements(sentence, asks):
    assert is_request(sentence) is asks


def test_requests_questions_chatter_and_fragments_are_not_facts_unless_asked_to_remember():
    assert extract_facts("Tell me about my bees. Can you help me? ok. Hi") == []
    assert extract_facts("So, tell me about my bees.") == []  # leading words do not make it a "remember"
    assert [f.text for f in extract_facts("Tell me a joke. My dog is Rex.")] == ["The user's dog is Rex."]
    assert split_sentences("One.   \n  \nTwo.") == ["One.", "Two."] and third_person("  ") == "."
    assert split_sentences("One\n \nTwo") == ["One", "Two"]  # a line of spaces is no sentence
    assert categorize("MY NAME IS ADA") == "identity"
    assert extract_facts("Well, hi") == [] and extract_facts("My") == []
    assert [f.text for f in extract_facts("Remember that tell Eva about the keys.")] == [
        "Tell Eva about the keys."]  # an explicit "remember" keeps even a request-shaped sentence
    assert [f.text for f in extract_facts("Note: the printer is broken")] == ["The printer is broken."]


def test_statements_about_the_world_are_kept_as_written_only_when_asked():
    message = "ticket 42: the printer on floor 3 is on fire. Is it out? My desk is near it"
    assert [f.text for f in extract_facts(message)] == ["The user's desk is near it."]
    kept = extract_facts(message, keep_statements=True)
    assert [f.text for f in kept] == ["Ticket 42: the printer on floor 3 is on fire.", "The user's desk is near it."]
    assert kept[0].sentence == "ticket 42: the printer on floor 3 is on fire."
    assert [f.text for f in extract_facts("ticket 7 is open", keep_statements=True)] == ["Ticket 7 is open."]
    assert [f.category for f in kept] == ["other", "other"]
    assert [f.text for f in extract_facts("The sky is blue!", keep_statements=True)] == ["The sky is blue!"]


def test_the_model_judge_compares_yes_with_no_at_the_answers_position():
    import torch

    class Tokenizer:
        def encode(self, text, add_special_tokens=True):
            ids = {" yes": [5, 6, 7], " no": [5, 6, 8]}[text]  # the last token of each answer is what counts
            return ids if add_special_tokens is False else ids + [9]  # special tokens: an end token, 9

        def __call__(self, prompt, return_tensors="pt"):
            self.prompt = prompt
            return type("Encoded", (), {"input_ids": torch.tensor([[1, 2, 3]])})()

    class Model(torch.nn.Module):
        def __init__(self, yes: float, no: float):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.yes, self.no = yes, no

        def forward(self, input_ids):
            logits = torch.zeros(1, input_ids.shape[1], 10)
            logits[0, -1, 7], logits[0, -1, 8] = self.yes, self.no
            logits[0, :-1, 8] = 100.0  # earlier positions say nothing about the answer
            return type("Output", (), {"logits": logits})()

    tokenizer = Tokenizer()
    assert model_judge(Model(2.0, 1.0), tokenizer)("Tuesdays are for chess.") is True
    assert 'Message: "Tuesdays are for chess."' in tokenizer.prompt and tokenizer.prompt.endswith("Answer:")
    assert model_judge(Model(1.0, 2.0), tokenizer)("Tuesdays are for chess.") is False
    assert model_judge(Model(1.0, 1.0), tokenizer)("x") is False  # a tie is not a yes


def test_categories_are_checked_in_order_and_other_is_the_rest():
    assert categorize("My name is Ada and I live in Oslo.") == "identity"  # the first category that matches
    assert categorize("I moved to Oslo.") == "location"
    assert categorize("I love my cat.") == "preference"
    assert categorize("My parrot talks.") == "pet"
    assert categorize("Tuesdays are for chess.") == "other"
