"""The `builtin:tinytales` corpus: a deterministic generator of simple children's stories (ADR 0004).

It is almost all data (names, places, objects, plots and their phrasings), so it lives apart from the pipeline code
that reads it; it depends on nothing else in the plugin, and story `i` is a pure function of (seed, i).
"""
from __future__ import annotations

import functools
import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass

# Stories are assembled from a plot (a list of stages, each with several phrasings), characters, a place and an
# object; every template is a complete English sentence with named slots.

_GIRLS = ("Lily", "Mia", "Sara", "Anna", "Emma", "Lucy", "Zoe", "Ella", "Amy", "Sophie", "Rosa", "Ivy", "Maya",
          "Nora", "Ruby", "Grace", "Chloe", "Jenny", "Kate", "Molly", "Hannah", "Julia", "Alice", "Sue", "Lena",
          "Tina", "Clara", "Bella", "Rita", "Nina")
_BOYS = ("Tom", "Ben", "Sam", "Max", "Leo", "Jack", "Tim", "Finn", "Jake", "Luke", "Noah", "Ryan", "Adam", "Eli",
         "Owen", "Joe", "Dan", "Kevin", "Peter", "Henry", "Oscar", "Theo", "Milo", "Bob", "Alex", "Paul", "Mark",
         "Sid", "Toby", "Hugo")
_PET_NAMES = ("Fluffy", "Spot", "Whiskers", "Buddy", "Coco", "Pip", "Patch", "Ginger", "Bubbles", "Rusty", "Honey",
              "Snowy", "Biscuit", "Pebble", "Peanut", "Socks", "Button", "Muffin", "Pumpkin", "Bingo")
_ANIMALS = ("cat", "dog", "bunny", "bear", "fox", "duck", "mouse", "frog", "bird", "puppy", "squirrel", "pig",
            "lamb", "owl", "kitten", "monkey")
_CHILD_ADJECTIVES = ("little", "little", "", "", "small", "young", "clever", "sweet")  # none repeats a trait
_ANIMAL_ADJECTIVES = ("little", "little", "small", "young", "happy")


@dataclass(frozen=True)
class _Place:
    at: str                       # "in the park": how a sentence says the hero is there
    spots: tuple[str, ...]        # where things hide: "under a big tree"
    sights: tuple[str, ...]       # one-sentence descriptions


_PLACES = {
    "park": _Place("in the park", ("under a big tree", "behind a bench", "near the swings", "in the tall grass",
                                   "by the little pond"),
                   ("There were tall trees, green grass and a big slide.",
                    "Children were laughing and playing on the swings.",
                    "Ducks were swimming in the little pond.")),
    "garden": _Place("in the garden", ("under a big leaf", "behind the flower pots", "next to the roses",
                                       "in the tall grass", "under the old bench"),
                     ("The garden was full of red and yellow flowers.",
                      "Bees were buzzing from flower to flower.",
                      "Carrots and tomatoes were growing in neat rows.")),
    "forest": _Place("in the forest", ("behind a big rock", "under a pile of leaves", "next to an old log",
                                       "under a tall pine tree", "near a little stream"),
                     ("The trees were so tall that they almost touched the sky.",
                      "The air smelled fresh and green.",
                      "Little birds sang high up in the branches.")),
    "beach": _Place("at the beach", ("behind a big rock", "in the soft sand", "near the water",
                                     "under a beach chair", "next to a pile of shells"),
                    ("The sand was warm and soft.",
                     "The waves went up and down, splash, splash.",
                     "Seagulls were flying over the blue sea.")),
    "farm": _Place("on the farm", ("behind the red barn", "in a pile of hay", "near the chicken coop",
                                   "under the old cart", "by the fence"),
                   ("There were cows, pigs and chickens everywhere.",
                    "A big red barn stood in the middle of the field.",
                    "The cows said \"Moo!\" as they ate the green grass.")),
    "meadow": _Place("in the meadow", ("in the tall grass", "behind a big rock", "under a little bush",
                                       "near a tall tree", "among the flowers"),
                     ("The meadow was full of wild flowers.",
                      "Butterflies danced over the grass.",
                      "A soft wind made the grass wave like the sea.")),
    "lake": _Place("by the lake", ("near the water", "behind a big rock", "under a tree", "by the little dock",
                                   "in the tall reeds"),
                   ("The water was calm and blue.",
                    "Ducks were swimming near the shore.",
                    "Little fish jumped out of the water now and then.")),
    "playground": _Place("at the playground", ("under the slide", "behind the swings", "in the sandbox",
                                               "near the fence", "under a bench"),
                         ("There were swings, a slide and a big sandbox.",
                          "Many children were running and laughing.",
                          "The swings went up and down in the sun.")),
    "backyard": _Place("in the backyard", ("behind the shed", "under the big tree", "next to the fence",
                                           "in the flower bed", "under the picnic table"),
                       ("The backyard had a big tree with a swing.",
                        "The grass was soft and green.",
                        "A little bird was drinking from the bird bath.")),
    "river": _Place("by the river", ("behind a big rock", "near the water", "under the old bridge",
                                     "in the tall grass", "next to a log"),
                    ("The river went by with a happy sound.",
                     "The water was so clear that you could see the stones at the bottom.",
                     "A frog sat on a stone and said, \"Ribbit!\"")),
    "hill": _Place("on the hill", ("behind a big rock", "in the tall grass", "under a lonely tree",
                                   "near a little bush", "by an old fence"),
                   ("From the top of the hill, you could see the whole town.",
                    "The grass on the hill was green and soft.",
                    "The wind on the hill was cool and fresh.")),
}
_WATER_PLACES = ("lake", "river", "beach")
_TREE_PLACES = ("park", "garden", "forest", "farm", "meadow", "backyard", "hill", "river", "lake")


@dataclass(frozen=True)
class _Thing:
    noun: str
    adjectives: tuple[str, ...]
    problems: tuple[str, ...]     # which "problem" plot variants fit: "tree", "water", "damage"
    damage: str = ""              # completes "... , and {damage}."
    mend: str = ""                # completes "{Parent} {mend}."


_THINGS = (
    _Thing("ball", ("red", "big", "bouncy", "blue", "yellow"), ("tree", "water")),
    _Thing("kite", ("red", "yellow", "big", "colorful"), ("tree", "damage"), "it got a big hole",
           "fixed the hole with some tape"),
    _Thing("teddy bear", ("soft", "brown", "old", "fluffy"), ("damage",), "its arm got a big rip",
           "sewed it up with a needle and thread"),
    _Thing("toy car", ("little", "red", "fast", "shiny"), ("damage",), "one of its wheels came off",
           "put the wheel back on with some glue"),
    _Thing("doll", ("pretty", "small", "old"), ("damage",), "its dress got a big rip",
           "sewed the dress with a needle and thread"),
    _Thing("hat", ("red", "big", "funny", "blue"), ("tree", "water")),
    _Thing("book", ("big", "old", "colorful"), ("damage",), "one of its pages tore",
           "fixed the page with some tape"),
    _Thing("toy boat", ("little", "blue", "wooden"), ("water", "damage"), "its little sail broke off",
           "glued the sail back on"),
    _Thing("drum", ("little", "red", "loud"), ("damage",), "it got a crack on the side",
           "fixed the crack with glue and string"),
    _Thing("toy train", ("little", "green", "wooden", "long"), ("damage",), "a wheel came off",
           "put the wheel back on"),
    _Thing("balloon", ("red", "big", "green", "yellow"), ("tree",)),
    _Thing("scarf", ("warm", "red", "soft", "striped"), ("tree", "water")),
    _Thing("bucket", ("blue", "little", "red"), ("water",)),
    _Thing("toy truck", ("big", "yellow", "orange"), ("damage",), "it would not roll anymore",
           "fixed it with a little screwdriver"),
)

_CHILD_HOMES = ("in a small house near the woods", "in a little house with a red door",
                "in a big house on a quiet street", "in a cozy house by the sea", "on a farm with lots of animals",
                "in a small town by a river")
_ANIMAL_HOMES = ("in a cozy home under a big tree", "on a big farm", "in a little house near a pond",
                 "at the edge of a green forest", "in a warm corner of an old barn")
_HOBBIES = ("playing outside", "singing songs", "drawing pictures", "looking at the clouds", "picking flowers",
            "reading books", "dancing", "climbing trees", "running in the grass", "playing games with friends",
            "building with blocks", "splashing in puddles")
_TOWNS = ("a small village", "a quiet little town", "a sunny valley", "a village by the sea",
          "a town with many trees")
_TRAITS = ("kind and friendly", "very curious", "always happy", "a little shy", "very brave", "full of energy")
_WHEN_OUTDOOR = ("One day,", "One sunny morning,", "One afternoon,", "One bright day,", "On a warm summer day,",
                 "One morning,")
_WHEN_INDOOR = ("One day,", "One morning,", "One afternoon,", "One cold day,", "One Saturday,")
_HOME_DETAILS = ("{His} room had a small bed and a shelf full of toys.", "{His} favorite toy was {a_obj}.",
                 "The house smelled of warm bread.", "A big clock on the wall went tick, tock.",
                 "Outside, the wind was blowing through the trees.", "{His} little home was warm and cozy.")
_WEATHER = ("The sun was shining, and the sky was blue.", "A soft wind was blowing.",
            "It was a warm and sunny day.", "Little white clouds floated across the sky.")


@dataclass(frozen=True)
class _Opening:
    text: str
    where: str = "any"            # "any", "outdoor" or "indoor": which plots it can start
    unnamed_only: bool = False    # uses "The little {kind}" and so needs an unnamed animal hero
    parent: str | None = None     # the opening's dialogue fixes which parent is in the story
    sets_scene: bool = False      # it already says where and when, so no scene sentence follows


_OPENINGS = (
    _Opening("Once upon a time, there was {hero_intro}. {He} lived {home}."),
    _Opening("Once upon a time, there was {hero_intro} who loved {hobby}."),
    _Opening("Once upon a time, in {town}, there lived {hero_intro}. Every day, {he} liked {hobby}."),
    _Opening("There was once {hero_intro}. {He} was {trait} and loved {hobby}."),
    _Opening("{Hero_intro} lived {home}. {He} was {trait}, and everyone liked {him}."),
    _Opening("One day, {hero_intro} went to the {place} with {his} {parent}.", "outdoor", sets_scene=True),
    _Opening("One day, {hero_intro} was playing {at_place}. {He} was {trait} and loved {hobby}.", "outdoor",
             sets_scene=True),
    _Opening("Mom said to {hero}, \"Let's go to the {place} today!\" {Hero} jumped up and down with joy. "
             "Soon they were {at_place}.", "outdoor", parent="mom", sets_scene=True),
    _Opening("Dad said to {hero}, \"It is a lovely day. Let's go to the {place}!\" {Hero} put on {his} shoes and "
             "ran to the door. Soon they were {at_place}.", "outdoor", parent="dad", sets_scene=True),
    _Opening("The little {kind} was very happy today. The sun was warm, and {he} wanted to play {at_place}. "
             "So {he} ran all the way there.", "outdoor", unnamed_only=True, sets_scene=True),
    _Opening("Mom said to {hero}, \"It is raining today, so we will stay inside.\" {Hero} looked out the window "
             "at the gray sky.", "indoor", parent="mom", sets_scene=True),
    _Opening("Dad said to {hero}, \"Today is a special day.\" {Hero} smiled and wondered what would happen.",
             "indoor", parent="dad", sets_scene=True),
    _Opening("The little {kind} woke up early. {He} stretched, yawned and looked around {his} cozy home.",
             "indoor", unnamed_only=True, sets_scene=True),
    _Opening("The little {kind} lived {home}. {He} was {trait} and loved {hobby}.", unnamed_only=True),
)
_GO_OUT = ("{When} {hero} went to the {place} to play.", "{When} {hero} and {his} {parent} went to the {place}.",
           "{When} {hero} decided to go to the {place}.", "{When} {hero} ran to the {place} as fast as {he} could.")
_STAY_IN = ("{When} {hero} was at home with {his} {parent}.", "{When} {hero} woke up early and ran to the kitchen.",
            "{When} it was too windy to play outside, so {hero} stayed home.")
_CLOSINGS = ("That night, {hero} went to sleep with a big smile.", "It was a very happy day.",
             "{Hero} knew {he} would never forget that day.", "And from then on, every day felt a little brighter.",
             "It was the best day ever.")


@dataclass(frozen=True)
class _Plot:
    """A story's middle and its lesson; a variant supplies the plot-specific slots its stages refer to."""
    outdoor: bool
    stages: tuple[tuple[str, ...], ...]
    lessons: tuple[str, ...]
    variants: tuple[dict, ...] = ({},)
    places: tuple[str, ...] = tuple(_PLACES)


_LOST = _Plot(True, (
    ("{Hero} had {a_obj}. {He} loved it very much and took it everywhere.",
     "{Hero} was playing with {his_obj}. It was {his} favorite toy.",
     "{Hero} had brought {his_obj} along. {He} played with it all morning."),
    ("After a while, {he} put the {obj} down to look at a pretty butterfly. When {he} turned around, the {obj} "
     "was gone!",
     "Then {he} ran off to play a game. When {he} came back, the {obj} was not there!",
     "Suddenly, {he} could not find the {obj}. {He} looked around, but it was gone."),
    ("{Hero} felt very sad. \"Where is my {obj}?\" {he} cried.",
     "\"Oh no!\" said {hero}. \"I lost my {obj}!\" {He} began to cry.",
     "{Hero} was very worried. {He} did not want to lose {his} favorite toy."),
    ("{He} looked {spot1}, but it was not there. {He} looked {spot2}, but it was not there either.",
     "First, {he} looked {spot1}. Then {he} looked {spot2}. The {obj} was nowhere to be found."),
    ("Just then, {friend_intro} came by. \"Why are you sad?\" asked {friend}. {Hero} told {fhim} about the lost "
     "{obj}. \"I will help you look,\" said {friend}.",
     "Soon, {friend_intro} saw {him}. \"Don't worry,\" said {friend}. \"Let's look together.\""),
    ("Together they looked {spot3}. There was the {obj}!",
     "At last, {friend} shouted, \"I see it!\" The {obj} was {spot3}."),
    ("{Hero} was so happy. {He} gave {friend} a big hug. \"Thank you!\" {he} said.",
     "\"Thank you so much!\" said {hero}. {He} held the {obj} tight and smiled."),
), ("From that day on, {hero} always took good care of {his} {obj}.",
    "{Hero} learned to keep {his} things close and to be thankful for good friends.",
    "That day, {hero} learned that a good friend is always ready to help."))

_SHARE = _Plot(True, (
    ("{Hero} had {a_obj}. {He} liked to play with it every day.",
     "{Hero} had {a_obj}. It was a present from {his} grandma, and {he} loved it."),
    ("Soon, {friend_intro} came to play. {Friend} looked at the {obj} and said, \"Can I play with your {obj}, "
     "please?\"",
     "Then {friend_intro} walked up to {him}. \"Wow, what a nice {obj}!\" said {friend}. \"Can I have a turn?\""),
    ("But {hero} held the {obj} close. \"No, it is mine!\" {he} said.",
     "{Hero} did not want to share. \"No,\" {he} said. \"I want to play with it by myself.\""),
    ("{Friend} felt sad and sat down alone. {FHe} looked at the ground and did not say a word.",
     "{Friend} looked very sad. {FHe} walked away slowly."),
    ("{Hero} saw that {friend} was sad, and {he} did not feel good inside.",
     "{His} {parent} saw what happened. \"{Call}, sharing is kind,\" said {Parent}. \"How would you feel if you "
     "were {friend}?\""),
    ("So {hero} walked over to {friend}. \"I am sorry,\" {he} said. \"Let's play with the {obj} together.\"",
     "{Hero} thought for a moment. Then {he} gave the {obj} to {friend}. \"You can have a turn,\" {he} said with "
     "a smile."),
    ("{Friend} smiled a big smile. They took turns and laughed all afternoon. Playing together was much more fun "
     "than playing alone.",
     "They played with the {obj} together until it was time to go home. {Hero} had never had so much fun."),
), ("{Hero} learned that sharing makes everyone happy.",
    "From that day on, {hero} and {friend} were best friends, and they always shared their toys.",
    "{Hero} learned that a toy is more fun when you share it with a friend."))

_HELP = _Plot(True, (
    ("{Hero} was walking {at_place} when {he} heard a small sound.",
     "While {hero} was playing, {he} saw something that made {him} stop."),
    ("There was {creature}. {trouble}",
     "{He} looked and saw {creature}. {trouble}"),
    ("\"Don't worry, I will help you,\" said {hero}.",
     "{Hero} felt sorry for {them}. \"I have to help,\" {he} said.",
     "{Hero} wanted to help. {He} thought and thought about what to do."),
    ("{rescue}",),
    ("{thanks}",),
    ("{Hero} felt warm and happy inside.",
     "{Hero} smiled. Helping felt very good.",
     "When {he} got home, {he} told {his} {parent} all about it. \"I am so proud of you,\" said {Parent}."),
), ("{Hero} learned that even a small helper can do a big thing.",
    "That day, {hero} learned that it feels good to help others.",
    "{Hero} learned that being kind is always the right thing to do."), variants=(
    dict(creature="a baby bird on the ground", them="it", places=_TREE_PLACES,
         trouble="It had fallen out of its nest, and it was chirping for its mom.",
         rescue=("{Hero} picked up the baby bird very gently. With help from {his} {parent}, {he} put it back in "
                 "its nest up in the tree.",),
         thanks=("Soon the mother bird came back and sang a happy song.",)),
    dict(creature="a small kitten high up in a tree", them="it", places=_TREE_PLACES,
         trouble="The kitten was scared, and it could not get down.",
         rescue=("{Hero} ran to get {his} {parent}. {Parent} brought a ladder and carefully carried the kitten "
                 "down.",),
         thanks=("The kitten purred and rubbed against {hero}'s legs.",)),
    dict(creature="a little duck all alone", them="it", places=("lake", "river", "park", "farm"),
         trouble="It was looking for its mother, and it was very scared.",
         rescue=("{Hero} walked with the little duck along the water. Soon they heard a loud \"Quack!\" It was "
                 "the mother duck!",),
         thanks=("The little duck swam to its mom, and they both looked very happy.",)),
    dict(creature="a puppy stuck in the mud", them="it", places=("farm", "park", "forest", "meadow", "river"),
         trouble="The puppy tried to get out, but its paws kept slipping.",
         rescue=("{Hero} found a long stick and held it out. The puppy held on, and {hero} pulled it out of the "
                 "mud.",),
         thanks=("The puppy wagged its tail and licked {hero}'s face.",)),
    dict(creature="a turtle lying on its back", them="it", places=("beach", "lake", "river", "garden", "forest"),
         trouble="It could not turn over, no matter how hard it tried.",
         rescue=("{Hero} gently turned the turtle over onto its feet.",),
         thanks=("The turtle slowly walked away, and it looked back at {hero} as if to say thank you.",)),
    dict(creature="an old man who had dropped his bag of apples", them="him",
         places=("park", "farm", "hill", "river", "playground"),
         trouble="The apples were rolling everywhere, and he could not bend down to get them.",
         rescue=("{Hero} ran to help. {He} picked up every apple and put it back in the bag.",),
         thanks=("\"Thank you, little one,\" said the old man. He gave {hero} a big red apple.",)),
    dict(creature="a butterfly caught in a spider web", them="it",
         places=("garden", "forest", "meadow", "backyard"),
         trouble="It moved its wings, but it could not get free.",
         rescue=("{Hero} used a little stick to pull the web away, very slowly and very carefully.",),
         thanks=("The butterfly flew up high and danced in the air, as if it was saying thank you.",)),
))

_PROBLEM = _Plot(True, (
    ("{Hero} and {friend_intro} were playing with {his_obj}.",
     "{Hero} was playing with {his_obj}. {Friend_intro} was playing too."),
    ("{event}",),
    ("\"Oh no!\" cried {hero}. \"What do we do now?\"",
     "{Hero} felt like crying. {His} favorite {obj} was {state}."),
    ("{attempt}",),
    ("{fix}",),
    ("\"We did it!\" they shouted together.",
     "{Hero} hugged {friend}. \"Thank you for helping me,\" {he} said."),
), ("{Hero} learned that when friends work together, they can solve any problem.",
    "{Hero} learned not to give up, even when things go wrong.",
    "That day, {hero} learned that there is always a way if you keep trying."), variants=(
    dict(problem="tree", places=_TREE_PLACES, state="stuck in the tree",
         event=("Suddenly, a strong wind blew the {obj} high up into a tall tree.",
                "The {obj} went up and up, and then it got stuck in the branches of a tall tree."),
         attempt=("{Hero} jumped and jumped, but {he} could not reach it.",
                  "{Hero} tried to climb the tree, but the branches were too high."),
         fix=("Then {friend} had an idea. {FHe} found a long stick and gently pushed the {obj}. It fell right down "
              "into {hero}'s arms!",
              "\"Let's ask for help,\" said {friend}. They ran to get {his} {parent}. {Parent} reached up high and "
              "pulled the {obj} down.")),
    dict(problem="water", places=_WATER_PLACES, state="in the water",
         event=("The {obj} fell into the water and began to float away!",
                "Splash! The {obj} landed in the water and drifted away from the shore."),
         attempt=("{Hero} reached out, but {his} arms were too short.",
                  "{Hero} wanted to go in, but the water was too deep."),
         fix=("{Friend} found a long branch. Together they pulled the {obj} back to the shore.",
              "They waited and waited. At last, a small wave pushed the {obj} back to the shore.")),
    dict(problem="damage", places=tuple(_PLACES), state="broken",
         event=("Then the {obj} fell on the hard ground, and {damage}.",
                "Oh no! {Friend} tripped, and the {obj} fell. When {hero} picked it up, {damage}."),
         attempt=("{Hero} tried to fix it, but {he} did not know how.",
                  "{Friend} said sorry many times. \"It was an accident,\" {fhe} said."),
         fix=("They took the {obj} to {his} {parent}. {Parent} {mend}. It was as good as new!",
              "\"I can help,\" said {Parent}. {PHe} {mend}, and soon the {obj} was as good as new.")),
))

_FIND = _Plot(True, (
    ("{Hero} was walking {at_place} when {he} saw something {hint} {spot1}.",
     "{Hero} was playing when {he} noticed something {hint} {spot1}."),
    ("{He} picked it up. It was {treasure}!",
     "\"What is this?\" {he} asked. It was {treasure}."),
    ("{He} showed it to {friend_intro}. \"Wow!\" said {friend}. \"What should we do with it?\"",
     "{Hero} ran to show it to {friend_intro}. \"Look what I found!\" {he} said."),
    ("{payoff}",),
    ("{Hero} and {friend} were amazed.",
     "It was the best surprise ever.",
     "{Hero} and {friend} could not stop smiling."),
), ("{Hero} learned that wonderful things can be found when you look closely.",
    "{Hero} learned that the best surprises are the ones you share with a friend.",
    "From then on, {hero} always kept {his} eyes open for little surprises."), variants=(
    dict(hint="small and white", treasure="a little white egg", places=("farm", "forest", "garden", "meadow"),
         payoff=("{Hero} kept the egg warm in a soft blanket. A few days later, the egg began to crack. Out came a "
                 "tiny yellow chick! \"Peep, peep!\" said the chick, and {hero} and {friend} laughed.",)),
    dict(hint="small and brown", treasure="a tiny seed", places=tuple(_PLACES),
         payoff=("They planted the seed and gave it water every day. Soon a little green plant came up. One "
                 "morning, it had a big yellow flower!",)),
    dict(hint="shiny", treasure="a small golden key", places=tuple(_PLACES),
         payoff=("{Hero} and {friend} looked everywhere for a lock. At last, they found an old wooden box {spot2}. "
                 "The key fit! Inside the box there were shiny stones and a little toy boat.",)),
    dict(hint="old and folded", treasure="an old map", places=tuple(_PLACES),
         payoff=("The map showed a big X next to a tall tree. They followed the map and dug under the tree. There "
                 "they found a box full of colorful marbles!",)),
    dict(hint="pink and pretty", treasure="a pretty pink shell", places=_WATER_PLACES,
         payoff=("{Hero} held the shell to {his} ear. {He} could hear the sound of the sea! Then {friend} listened "
                 "too, and {fhe} could hear it as well.",)),
    dict(hint="long and blue", treasure="a long blue feather", places=tuple(_PLACES),
         payoff=("They used the feather to paint a picture of a beautiful bird. {Hero} gave the picture to {his} "
                 "{parent}, who hung it on the wall.",)),
))

_FEAR = _Plot(True, (
    ("{Hero} was afraid of {fear}.",
     "There was one thing {hero} did not like at all: {fear}."),
    ("{scary}",),
    ("{Hero} wanted to be brave, but {he} felt scared.",
     "\"I am scared,\" {he} said in a small voice."),
    ("{courage}",),
    ("{attempt}",),
    ("{result}",),
    ("{Hero} felt very proud. \"I did it!\" {he} said.",
     "{His} {parent} gave {him} a big hug. \"You were very brave,\" said {Parent}."),
), ("{Hero} learned that being brave means trying, even when you are scared.",
    "From that day on, {hero} was not afraid of {fear} anymore.",
    "{Hero} learned that many things are not as scary as they look."), variants=(
    dict(fear="big dogs", places=("park", "farm", "hill", "playground", "backyard"),
         scary=("Then a big brown dog ran up to {him}. \"Woof!\" it barked.",),
         courage=("\"Don't be scared,\" said {Parent}. \"He is a friendly dog. Hold out your hand and let him smell "
                  "it.\"",),
         attempt=("{Hero} slowly held out {his} hand.",),
         result=("The dog sniffed it and wagged its tail. Then it licked {his} hand! {Hero} laughed. The big dog "
                 "was not scary at all.",)),
    dict(fear="the tall slide", places=("park", "playground"),
         scary=("All the other children went down the slide, but {hero} stayed at the bottom. It looked so high!",),
         courage=("{Friend_intro} came over. \"Let's go together,\" said {friend}. \"I will be right behind you.\"",),
         attempt=("{Hero} climbed up the steps one by one. At the top, {he} closed {his} eyes and let go.",),
         result=("Whee! {He} zoomed down the slide and landed in the sand. \"That was fun!\" {he} shouted. \"Let's "
                 "do it again!\"",)),
    dict(fear="the water", places=("beach", "lake"),
         scary=("The waves looked big, and the water looked cold and deep.",),
         courage=("{His} {parent} held out a hand. \"I will hold you the whole time,\" said {Parent}. \"We will go "
                  "in slowly.\"",),
         attempt=("{Hero} put one foot in the water, then the other. The water was cool and nice.",),
         result=("Soon {he} was splashing and kicking and laughing. Swimming was fun!",)),
))

_FEAR_AT_HOME = _Plot(False, _FEAR.stages, _FEAR.lessons, variants=(
    dict(fear="the dark",
         scary=("Every night, when the light went off, {his} room looked big and strange. The shadows on the wall "
                "looked like monsters.",
                "At bedtime, {hero} always asked for the light to stay on. In the dark, every little sound seemed "
                "loud and strange."),
         courage=("One night, {his} {parent} sat on the bed. \"Let me show you something,\" said {Parent}, and "
                  "{phe} opened the curtains.",
                  "One night, {Parent} came in and sat down. \"Let's look at the night together,\" {phe} said, and "
                  "{phe} opened the window."),
         attempt=("{Hero} looked out the window. The moon was big and round, and the sky was full of little "
                  "stars.",
                  "{Hero} held {Parent}'s hand and looked outside. Fireflies were blinking in the garden, and an owl "
                  "said, \"Hoo, hoo.\""),
         result=("\"The night is not scary,\" {hero} said softly. \"It is beautiful.\" Soon {he} fell asleep with "
                 "a smile.",
                 "\"The night is full of friends,\" {hero} whispered. That night, {he} slept all night long.")),
    dict(fear="thunder",
         scary=("One evening, a big storm came. The thunder went BOOM, and {hero} hid under {his} blanket.",
                "One night, the wind blew hard, and the rain hit the window. Then the thunder roared, and {hero} ran "
                "to {his} {parent}."),
         courage=("{Parent} came and sat next to {him}. \"Thunder is just the sound the clouds make,\" said "
                  "{Parent}. \"It cannot hurt you. Let's count after each flash.\"",
                  "{Parent} held {him} close. \"Thunder is loud, but it is far away,\" said {Parent}. \"Let's make a "
                  "cozy fort and wait for the storm to pass.\""),
         attempt=("So they counted together. One, two, three, BOOM! Each time, the boom was a little softer.",
                  "They built a fort with pillows and blankets, and {Parent} read a story inside it."),
         result=("Soon the storm went far away. In the morning, there was a big rainbow in the sky.",
                 "When the story was over, the storm was gone. {Hero} peeked outside and saw the moon again.")),
))

_MAKE_STAGES = (
    ("{Hero} and {friend_intro} wanted to {project}.",
     "{Hero} had a great idea. \"Let's {project}!\" {he} said to {friend_intro}.",
     "{Friend_intro} came over to play. \"What should we do today?\" asked {friend}. \"Let's {project}!\" said "
     "{hero}."),
    ("They got everything they needed and started to work.",
     "They worked hard and sang a happy song while they worked.",
     "First they made a plan. Then they got to work."),
    ("{mistake}",),
    ("\"Oh no!\" cried {hero}.",
     "For a moment, {hero} felt like giving up.",
     "{Hero} and {friend} looked at each other. What could they do now?"),
    ("{fix}",),
    ("{result}",),
    ("{praise}",),
)
_MAKE_LESSONS = ("{Hero} learned that it is okay to make mistakes, because you can always try again.",
                 "{Hero} and {friend} learned that making something together is the best kind of fun.",
                 "{Hero} learned that good things take time and patience.")
_MAKE = _Plot(False, _MAKE_STAGES, _MAKE_LESSONS, variants=(
    dict(project="bake a cake for Grandma",
         mistake=("{Hero} opened the bag of flour too fast, and white flour flew everywhere! Even {friend}'s nose "
                  "was white.",),
         fix=("They laughed and cleaned up together. Then they tried again, very carefully.",),
         result=("Soon the cake came out of the oven, warm and sweet.",),
         praise=("When Grandma came, she took a big bite. \"This is the best cake I have ever had!\" she said.",)),
    dict(project="make a birthday card for Grandpa",
         mistake=("Then {hero} knocked over the cup of blue paint. There was a big blue spot in the middle of the "
                  "card!",),
         fix=("\"Let's make the blue spot into a lake,\" said {friend}. So they painted ducks and trees around it.",),
         result=("The card looked even better than before.",),
         praise=("Grandpa smiled a big smile. He put the card on his table and looked at it every day.",)),
    dict(project="build a little house for the birds",
         mistake=("When they put on the roof, it fell right off.",),
         fix=("{Parent} came to help. {PHe} showed them how to use a little more glue and hold the roof tight.",),
         result=("At last, the bird house was done. They hung it on the big tree outside.",),
         praise=("The next morning, two little birds moved in and sang a happy song.",)),
    dict(project="plant flowers for {his} {parent}",
         mistake=("The next day, the little plants looked sad and droopy.",),
         fix=("\"They need water!\" said {friend}. So they watered the plants every day.",),
         result=("Soon the garden was full of red, pink and yellow flowers.",),
         praise=("{Parent} was so happy. \"These are the prettiest flowers I have ever seen,\" {phe} said.",)),
))
_MAKE_AT_BEACH = _Plot(True, _MAKE_STAGES, _MAKE_LESSONS, places=("beach",), variants=(
    dict(project="build the biggest sandcastle on the beach",
         mistake=("Just when it was almost done, a big wave came and washed it away!",),
         fix=("So they built a new one, far away from the water. They gave it tall towers and a little door made of "
              "shells.",),
         result=("It was the biggest sandcastle they had ever seen.",),
         praise=("People walked by and said, \"Wow, what a great castle!\" {Hero} and {friend} smiled proudly.",)),
))

_PLOTS = (_LOST, _SHARE, _HELP, _PROBLEM, _FIND, _FEAR, _FEAR_AT_HOME, _MAKE, _MAKE_AT_BEACH)
_VARIANT_CONSTRAINTS = ("places", "problem")  # variant keys that choose the place and object, not slots


def _with_article(phrase: str) -> str:
    return ("an " if phrase[0].lower() in "aeiou" else "a ") + phrase


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


@dataclass(frozen=True)
class _Character:
    ref: str      # how the story names them mid-sentence: "Lily", "the little cat"
    intro: str    # first mention: "a little girl named Lily"
    kind: str     # "girl", "cat"
    she: bool
    call: str     # how others address them in dialogue: "Lily", "Little one"


def _pronouns(she: bool, prefix: str = "") -> dict[str, str]:
    """{he} {his} {him} and sentence-initial {He} {His}; with prefix "f": {fhe} ... and {FHe} {FHis}."""
    he, his, him = ("she", "her", "her") if she else ("he", "his", "him")
    cap = prefix.upper()
    return {f"{prefix}he": he, f"{cap}He": he.title(), f"{prefix}his": his, f"{cap}His": his.title(),
            f"{prefix}him": him}


class TinyTales:
    """`builtin:tinytales`: simple children's stories (100–250 words), story `i` a pure function of (seed, i)."""

    VERSION = 1  # bump when templates change, so token caches built from older stories are not reused
    MIN_WORDS = 100

    def __init__(self, seed: int):
        self.seed = int(seed)

    def story(self, i: int) -> str:
        # one RNG per story, seeded from a stable digest (Python's hash() is salted per process): random access,
        # so splits and caps never change a story's text
        digest = hashlib.sha256(f"tinytales:{self.seed}:{int(i)}".encode()).digest()
        return _tell(random.Random(int.from_bytes(digest[:8], "big")))

    def stories(self, start: int, count: int) -> list[str]:
        return [self.story(i) for i in range(start, start + count)]


def _tell(rng: random.Random) -> str:
    plot = rng.choice(_PLOTS)
    variant = rng.choice(plot.variants)
    hero = _make_hero(rng)
    opening = _choose_opening(rng, plot, hero)
    slots = _story_slots(rng, plot, variant, hero, opening)
    fill = functools.partial(_fill, rng, slots)
    for key, value in variant.items():  # plot-specific slots are themselves templates over the story's slots
        if key not in _VARIANT_CONSTRAINTS:
            slots[key] = fill(value)
    beginning, spare_details = _beginning(rng, plot, opening, slots["place"], fill)
    middle = [fill(stage) for stage in plot.stages]
    ending = [fill(plot.lessons), fill(_CLOSINGS)]
    while spare_details and sum(len(s.split()) for s in beginning + middle + ending) < TinyTales.MIN_WORDS:
        beginning.append(fill(spare_details.pop()))
    return "\n".join(" ".join(part) for part in (beginning, middle, ending))


def _beginning(rng: random.Random, plot: _Plot, opening: _Opening, place: str,
               fill: Callable) -> tuple[list[str], list[str]]:
    """The opening, where and when (unless the opening said it) and one or two descriptive sentences; also the
    descriptive sentences left unused, for stories that come out short."""
    sentences = [fill(opening.text)]
    if not opening.sets_scene:
        sentences.append(fill(_GO_OUT if plot.outdoor else _STAY_IN))
    details = list(_PLACES[place].sights + _WEATHER if plot.outdoor else _HOME_DETAILS)
    rng.shuffle(details)
    sentences.append(fill(details.pop()))
    if rng.random() < 0.5:
        sentences.append(fill(details.pop()))
    return sentences, details


def _fill(rng: random.Random, slots: dict, options: str | tuple[str, ...]) -> str:
    template = options if isinstance(options, str) else rng.choice(options)
    return template.format_map(slots)


def _make_hero(rng: random.Random) -> _Character:
    she = rng.random() < 0.5
    roll = rng.random()
    if roll < 0.6:
        kind = "girl" if she else "boy"
        name = rng.choice(_GIRLS if she else _BOYS)
        adjective = rng.choice(_CHILD_ADJECTIVES)
        return _Character(name, _with_article(f"{adjective} {kind}".strip()) + f" named {name}", kind, she, name)
    kind = rng.choice(_ANIMALS)
    if roll < 0.85:
        name = rng.choice(_PET_NAMES)
        return _Character(name, _with_article(f"{rng.choice(_ANIMAL_ADJECTIVES)} {kind}") + f" named {name}", kind,
                          she, name)
    return _Character(f"the little {kind}", f"a little {kind}", kind, she, "Little one")


def _make_friend(rng: random.Random, hero: _Character, hero_his: str) -> _Character:
    she = rng.random() < 0.5
    if rng.random() < 0.6:
        name = rng.choice([n for n in (_GIRLS if she else _BOYS) if n != hero.ref])
        return _Character(name, f"{hero_his} friend {name}", "friend", she, name)
    kind = rng.choice(_ANIMALS)
    name = rng.choice([n for n in _PET_NAMES if n != hero.ref])
    return _Character(name, _with_article(f"{rng.choice(('friendly', 'little'))} {kind}") + f" named {name}", kind,
                      she, name)


def _choose_opening(rng: random.Random, plot: _Plot, hero: _Character) -> _Opening:
    where = "outdoor" if plot.outdoor else "indoor"
    unnamed = hero.ref.startswith("the little")
    fits = [o for o in _OPENINGS if o.where in ("any", where) and (unnamed or not o.unnamed_only)]
    if unnamed and rng.random() < 0.5:  # keeps "The little cat ..." openings common enough to be in-distribution
        fits = [o for o in fits if o.unnamed_only]
    return rng.choice(fits)


def _story_slots(rng: random.Random, plot: _Plot, variant: dict, hero: _Character, opening: _Opening) -> dict:
    slots = _pronouns(hero.she)
    friend = _make_friend(rng, hero, slots["his"])
    parent = opening.parent or rng.choice(("mom", "dad"))
    place_name = rng.choice(variant.get("places", plot.places))
    place = _PLACES[place_name]
    problem = variant.get("problem")
    thing = rng.choice([t for t in _THINGS if problem is None or problem in t.problems])
    thing_phrase = f"{rng.choice(thing.adjectives)} {thing.noun}"
    spot1, spot2, spot3 = rng.sample(place.spots, 3)
    slots.update(_pronouns(friend.she, "f"))
    slots.update(_pronouns(parent == "mom", "p"))
    slots.update(
        hero=hero.ref, Hero=_capitalize(hero.ref), hero_intro=hero.intro, Hero_intro=_capitalize(hero.intro),
        kind=hero.kind, Call=hero.call,
        friend=friend.ref, Friend=_capitalize(friend.ref), friend_intro=friend.intro,
        Friend_intro=_capitalize(friend.intro),
        parent=parent, Parent=_capitalize(parent),
        place=place_name, at_place=place.at, spot1=spot1, spot2=spot2, spot3=spot3,
        obj=thing.noun, a_obj=_with_article(thing_phrase), his_obj=f"{slots['his']} {thing_phrase}",
        damage=thing.damage, mend=thing.mend,
        home=rng.choice(_CHILD_HOMES if hero.kind in ("girl", "boy") else _ANIMAL_HOMES),
        hobby=rng.choice(_HOBBIES), town=rng.choice(_TOWNS), trait=rng.choice(_TRAITS),
        When=rng.choice(_WHEN_OUTDOOR if plot.outdoor else _WHEN_INDOOR),
    )
    return slots
