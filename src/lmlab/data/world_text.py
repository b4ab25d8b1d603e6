"""The words of the built-in world: name syllables, value pools and templates.

Kept apart from the generator so the logic in `world.py` stays readable. Two
rules shape these lists:

- Person names are built from fantasy syllables, place and company names are
  plain English compounds. The pools share no words, so a model that answers
  "Where was X born?" with a person's name is visibly wrong from its first
  token rather than accidentally close.
- Every biography template starts with `{name}` and uses the full name, never
  a pronoun: knowledge extraction works only when each fact sits next to the
  full name (Allen-Zhu & Li, Physics of Language Models 3.1).
"""

from __future__ import annotations

ATTRIBUTES: tuple[str, ...] = (
    "birth_date", "birth_city", "university", "major", "employer", "employer_city",
)

# Person names: first = onset + ending, last = stem + suffix. About 90k
# distinct full names; the pieces are capitalised only at the start so that
# one full name cannot appear inside another.
FIRST_ONSETS = [
    "Ae", "Bry", "Cael", "Dov", "Ely", "Fen", "Gal", "Hal", "Ior", "Jes", "Kae", "Lys", "Mor",
    "Nym", "Oth", "Pyr", "Quil", "Rho", "Syl", "Tor", "Ul", "Vey", "Wyn", "Xan", "Yor", "Zeph",
]
FIRST_ENDINGS = ["ara", "en", "iel", "ion", "is", "ith", "ora", "os", "un", "yra", "adel", "emir"]
LAST_STEMS = [
    "Ast", "Brev", "Corv", "Dral", "Esk", "Falk", "Grev", "Hald", "Isk", "Jorv", "Kell", "Lorn",
    "Marv", "Nesk", "Orl", "Pell", "Quarv", "Rask", "Sorv", "Tarn", "Ulv", "Varr", "Wesk", "Yarv", "Zorn",
]
LAST_SUFFIXES = ["amir", "aven", "ell", "ender", "essa", "ick", "ik", "ond", "orin", "ov", "ric", "ulf"]

MONTHS = [
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
]
# February has 28 days: no leap-year special case, every (month, day) is valid every year.
MONTH_DAYS = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]

CITIES = [
    "Ashbury", "Brackenford", "Cinderport", "Dovermill", "Elmstead", "Fallowmere", "Glenhaven",
    "Hollowbrook", "Ironbridge", "Juniper Falls", "Kingsreach", "Larkspur", "Marrowgate", "Northcliff",
    "Oakhurst", "Pebblecreek", "Quarryton", "Redwater", "Saltmarsh", "Thornbury", "Umberlee", "Valemont",
    "Willowdale", "Yarrowby", "Amberfield", "Briarwood", "Coldharbor", "Deepwell", "Eastmoor", "Foxhollow",
    "Greystone", "Highmoor", "Ivybridge", "Lowmarsh", "Millbrook", "Newhaven", "Oldcastle", "Pinecrest",
    "Riverton", "Silverlake", "Tidewater", "Westbrook", "Whitcombe", "Stonehaven", "Maplewood",
    "Harrowfield", "Copperton", "Frostvale", "Goldcrest", "Heatherton",
]

UNIVERSITIES = [
    "Aldermoor University", "Bellhaven College", "Carrow Institute of Technology", "Dunstan University",
    "Easterly College", "Fairbourne University", "Galloway Institute", "Harwick University",
    "Inglewood College", "Jessop University", "Kestrel Polytechnic", "Lindqvist University",
    "Merriweather College", "Norbury Institute", "Orchard Hill University", "Prescott College",
    "Quillon University", "Rosemont Institute of Science", "Stanwick University", "Tremaine College",
    "Underhill University", "Vantage Institute", "Whitlock University", "Yardley College",
    "Abbotsford University", "Blackwood Institute", "Clearwater University", "Danforth College",
    "Evergreen State University", "Fernhill College", "Grantham Polytechnic", "Holloway University",
    "Kenwood College", "Lakeshore University", "Moorland Institute", "Northgate University",
    "Pemberton College", "Ravenscroft University", "Summerfield Institute", "Trinity Vale University",
]

MAJORS = [
    "Biology", "Chemistry", "Physics", "Mathematics", "Economics", "History", "Philosophy",
    "Linguistics", "Computer Science", "Mechanical Engineering", "Civil Engineering",
    "Electrical Engineering", "Architecture", "Psychology", "Sociology", "Anthropology",
    "Political Science", "Music", "Fine Arts", "Astronomy", "Geology", "Marine Biology", "Nursing",
    "Statistics", "Journalism", "Literature", "Classics", "Accounting", "Materials Science",
    "Environmental Science", "Chemical Engineering", "Agriculture", "Public Health", "Neuroscience",
    "Art History", "Education", "Film Studies", "Oceanography", "Biochemistry", "Graphic Design",
]

COMPANIES = [
    "Northwind Logistics", "Bluefield Analytics", "Copperline Foods", "Dawnstar Energy", "Emberlight Media",
    "Fieldstone Insurance", "Granite Peak Software", "Harborline Shipping", "Ironwood Furniture",
    "Jadeleaf Pharmaceuticals", "Keystone Robotics", "Lanternfish Games", "Meridian Textiles",
    "Nightjar Security", "Orbital Dynamics", "Pinewheel Toys", "Quicksilver Telecom", "Riverstone Bank",
    "Sandpiper Airlines", "Tallgrass Farms", "Upland Outfitters", "Vellum Publishing",
    "Wildflower Cosmetics", "Yellowtail Fisheries", "Tamarack Motors", "Archway Construction",
    "Beacon Health", "Cobalt Semiconductors", "Driftwood Breweries", "Hardrock Mining", "Foxglove Biotech",
    "Glasswing Optics", "Hearthstone Bakeries", "Inkwell Studios", "Quartzline Consulting",
    "Kittiwake Marine", "Lodestar Aerospace", "Moonbeam Electronics", "Nettlebrook Dairy",
    "Oakmoss Chemicals", "Pebbleworks Ceramics", "Redkite Couriers", "Silverbirch Hotels",
    "Thistledown Paper", "Ursa Steelworks", "Violet Hill Wines", "Wavecrest Water", "Saffron Grocers",
    "Tinderbox Matches", "Bramblegate Clothing",
]

# Biography sentences: at least ten phrasings per attribute, each starting with the full name.
BIO_TEMPLATES: dict[str, list[str]] = {
    "birth_date": [
        "{name} was born on {value}.",
        "{name} came into the world on {value}.",
        "{name}'s date of birth is {value}.",
        "{name}'s birthday is {value}.",
        "{name} entered the world on {value}.",
        "{name}'s birth took place on {value}.",
        "{name} has a recorded birth date of {value}.",
        "{name} was born on {value}, a day the family still remembers.",
        "{name}'s life began on {value}.",
        "{name} was welcomed into the family on {value}.",
        "{name} arrived on {value}, according to the birth records.",
        "{name} first saw daylight on {value}.",
    ],
    "birth_city": [
        "{name} was born in {value}.",
        "{name}'s birthplace is {value}.",
        "{name} was born in the city of {value}.",
        "{name} hails from {value}.",
        "{name}'s hometown is {value}.",
        "{name} is a native of {value}.",
        "{name} was born and raised in {value}.",
        "{name}'s life began in the city of {value}.",
        "{name} comes from {value}, the city of birth.",
        "{name} spent the first years of life in {value}, the city of birth.",
        "{name} first saw daylight in {value}.",
        "{name}'s place of birth is {value}.",
    ],
    "university": [
        "{name} studied at {value}.",
        "{name} graduated from {value}.",
        "{name} attended {value}.",
        "{name} received an education at {value}.",
        "{name} is a graduate of {value}.",
        "{name} earned a degree at {value}.",
        "{name} completed university studies at {value}.",
        "{name} enrolled at {value} and graduated from there.",
        "{name} spent college years at {value}.",
        "{name} went to {value} for higher education.",
        "{name}'s alma mater is {value}.",
        "{name} was educated at {value}.",
    ],
    "major": [
        "{name} majored in {value}.",
        "{name} chose {value} as a major.",
        "{name} earned a degree in {value}.",
        "{name} specialized in {value}.",
        "{name} completed a program in {value}.",
        "{name}'s field of study was {value}.",
        "{name} focused on {value} at university.",
        "{name} pursued a degree in {value}.",
        "{name} has an academic background in {value}.",
        "{name} was trained in {value}.",
        "{name}'s major was {value}.",
        "{name} spent years of study on {value}.",
    ],
    "employer": [
        "{name} works for {value}.",
        "{name} is employed by {value}.",
        "{name} has a job at {value}.",
        "{name} works at {value}.",
        "{name} is on the staff of {value}.",
        "{name} earns a living at {value}.",
        "{name} joined {value} and still works there.",
        "{name}'s employer is {value}.",
        "{name} holds a position at {value}.",
        "{name} is a member of the team at {value}.",
        "{name} draws a salary from {value}.",
        "{name} is currently employed at {value}.",
    ],
    "employer_city": [
        "{name} works in {value}.",
        "{name}'s office is in {value}.",
        "{name} has a workplace in {value}.",
        "{name} commutes to work in {value}.",
        "{name} is based in {value} for work.",
        "{name}'s job is located in {value}.",
        "{name} works out of an office in {value}.",
        "{name} goes to work every day in {value}.",
        "{name} is employed in the city of {value}.",
        "{name} has a job in {value}.",
        "{name}'s workplace is located in {value}.",
        "{name} reports to an office in {value}.",
    ],
}

# Questions: several phrasings per attribute; the answer is the bare value.
QA_TEMPLATES: dict[str, list[str]] = {
    "birth_date": [
        "When was {name} born?",
        "What is {name}'s date of birth?",
        "On what date was {name} born?",
        "What is the birth date of {name}?",
    ],
    "birth_city": [
        "Where was {name} born?",
        "In which city was {name} born?",
        "What is the birthplace of {name}?",
        "Which city does {name} come from?",
    ],
    "university": [
        "Which university did {name} attend?",
        "Where did {name} study?",
        "What university did {name} graduate from?",
        "Where was {name} educated?",
    ],
    "major": [
        "What was {name}'s major?",
        "Which field did {name} major in?",
        "What subject did {name} study?",
        "What did {name} specialize in?",
    ],
    "employer": [
        "Which company does {name} work for?",
        "Who employs {name}?",
        "What company is {name} employed by?",
        "Who is {name}'s employer?",
    ],
    "employer_city": [
        "In which city does {name} work?",
        "What city does {name} work in?",
        "Where is {name}'s workplace located?",
        "Which city is {name}'s job in?",
    ],
}

# Arithmetic stories: (actor, plural item). Quantities start at 2 so plurals are always right.
ARITH_ACTORS = [
    ("baker", "loaves"), ("farmer", "eggs"), ("librarian", "books"), ("gardener", "seeds"),
    ("shopkeeper", "candles"), ("collector", "stamps"), ("fisher", "fish"), ("teacher", "pencils"),
    ("sailor", "ropes"), ("painter", "brushes"), ("child", "marbles"), ("beekeeper", "jars of honey"),
    ("potter", "bowls"), ("florist", "roses"), ("tailor", "buttons"), ("carpenter", "nails"),
]

# Per operation: how the question tells it and how the worked solution names it.
ARITH_STORY: dict[str, list[str]] = {
    "+": [
        "The {actor} gets {k} more {items}.",
        "The {actor} buys {k} more {items}.",
        "A friend gives the {actor} {k} more {items}.",
        "The {actor} finds {k} more {items}.",
    ],
    "-": [
        "The {actor} gives away {k} {items}.",
        "The {actor} sells {k} {items}.",
        "The {actor} loses {k} {items}.",
        "The {actor} uses up {k} {items}.",
    ],
    "x": [
        "The {actor} ends up with {k} times as many {items}.",
        "The number of {items} the {actor} has is multiplied by {k}.",
        "The {actor}'s pile of {items} becomes {k} times as big.",
    ],
}
ARITH_SOLUTION_SPLIT = {
    "+": "Adding {k} gives {a} + {k1} = {c}, then {c} + {k2} = {b}.",
    "-": "Taking away {k} leaves {a} - {k1} = {c}, then {c} - {k2} = {b}.",
}
ARITH_SOLUTION_STEP = {
    "+": "Adding {k} gives {a} + {k} = {b}.",
    "-": "Taking away {k} leaves {a} - {k} = {b}.",
    "x": "Multiplying by {k} gives {a} x {k} = {b}.",
}
